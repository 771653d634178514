"""Tiny randomly initialised models saved in the same formats users load, built offline in
well under a second each. Used by the test suite (and handy for smoke tests of plug-ins):

* :func:`build_tiny_causal_lm` - a 2-layer Llama + a byte-level BPE tokenizer trained on the
  spot, **without a pad token** (like many causal LMs), as a transformers directory;
* :func:`build_tiny_open_clip` - an open_clip ``local-dir:`` directory;
* :func:`build_tiny_hf_clip` - a transformers ``CLIPModel`` + ``CLIPProcessor`` directory, the
  CLIP tokenizer rebuilt from open_clip's bundled BPE vocabulary;
* :func:`build_tiny_bert` - a 2-layer BERT + WordPiece tokenizer directory;
* :func:`build_tiny_sentence_transformer` - that BERT saved as a sentence-transformers model
  with a chosen pooling (and optionally a Normalize module);
* :func:`add_remote_code` - turn a tiny model directory into one that needs its own Python code
  (``auto_map`` + ``configuration_*.py`` / ``modeling_*.py``) whose import writes a marker file:
  for testing that nothing runs without ``trust_remote_code``.

The weights are random: these test loading, batching and shapes, not quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a short summary of the post", "a long and detailed summary of the whole post with every point",
    "what is the capital of france", "the capital of france is paris",
    "i prefer short answers", "i prefer long answers with details", "hello world",
    "a photo of a cat", "a photo of a dog", "a cup of coffee", "a rocket launch",
]


def build_tiny_causal_lm(directory: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny LlamaForCausalLM and its tokenizer (BOS/EOS, no pad token) saved to ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", model_max_length=512)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=bos, eos_token_id=tok.token_to_id("</s>"),
                         pad_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    from .assets import quiet_transformers

    with quiet_transformers(progress=False):
        model.save_pretrained(directory)
        fast.save_pretrained(directory)
    return directory


def tiny_open_clip_config(embed_dim: int = 32) -> dict:
    """open_clip ``model_cfg`` of a ~3 M parameter CLIP (image 64 px, 2+2 layers, width 64)."""
    return {"embed_dim": embed_dim,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def build_tiny_open_clip(directory: str | Path, seed: int = 0) -> Path:
    """An open_clip ``local-dir:`` directory (open_clip_config.json + open_clip_model.safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = tiny_open_clip_config()
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    blob = {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                 "std": [0.26862954, 0.26130258, 0.27577711]}}
    (directory / "open_clip_config.json").write_text(json.dumps(blob, indent=1))
    return directory


def clip_tokenizer_files(directory: str | Path) -> tuple[Path, Path]:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` rebuilt from open_clip's bundled BPE."""
    from open_clip.tokenizer import SimpleTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    st = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in st.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])]
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_tiny_hf_clip(directory: str | Path, seed: int = 0) -> Path:
    """A transformers CLIPModel + CLIPProcessor directory (hidden 64, 2 layers, image 64 px)."""
    import tempfile

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory = Path(directory)
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = clip_tokenizer_files(tmp)
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "vocab_size": 49408, "max_position_embeddings": 77}
    vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 64, "patch_size": 16}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    from .assets import quiet_transformers

    with quiet_transformers(progress=False):
        model.save_pretrained(directory)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def sample_images(directory: str | Path, names: tuple[str, ...] = ("chelsea", "coffee", "rocket", "astronaut")) -> list[Path]:
    """Save scikit-image's bundled photos as JPEG files; returns their paths."""
    from PIL import Image
    from skimage import data

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        p = directory / f"{name}.jpg"
        if not p.exists():
            Image.fromarray(getattr(data, name)()).convert("RGB").save(p, quality=92)
        paths.append(p)
    return paths


def build_tiny_bert(directory: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny BertModel and a WordPiece tokenizer over :data:`CORPUS` saved to ``directory``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    words = sorted({w for line in CORPUS for w in line.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,!?"))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(directory / "vocab.txt"), model_max_length=128)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128)
    from .assets import quiet_transformers

    with quiet_transformers(progress=False):
        BertModel(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def build_tiny_sentence_transformer(directory: str | Path, pooling: str = "cls", normalize: bool = False, seed: int = 0) -> Path:
    """A tiny BERT saved with ``SentenceTransformer.save``: Transformer + Pooling(``pooling``)
    [+ Normalize] (needs the sentence-transformers package)."""
    import tempfile

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    directory = Path(directory)
    with tempfile.TemporaryDirectory() as tmp:
        bert = build_tiny_bert(Path(tmp) / "bert", seed=seed)
        first = modules.Transformer(str(bert), max_seq_length=64)
        stack = [first, modules.Pooling(first.get_embedding_dimension(), pooling_mode=pooling)]
        if normalize:
            stack.append(modules.Normalize())
        SentenceTransformer(modules=stack, device="cpu").save(str(directory))
    return directory


def add_remote_code(directory: str | Path, marker: str | Path, model_type: str = "pal-mm-custom") -> Path:
    """Make the (Llama or BERT) model in ``directory`` need its own code: ``config.json`` gets an
    unknown ``model_type`` and an ``auto_map`` to ``configuration_custom.py`` /
    ``modeling_custom.py``, which subclass the built-in classes and, when imported, write
    ``marker``. Loading it with ``trust_remote_code=True`` works (and writes the marker)."""
    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text())
    base = cfg.get("model_type", "llama")
    names = {"llama": ("LlamaConfig", "LlamaModel"), "bert": ("BertConfig", "BertModel")}[base]
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the model code ran')\n"
    (directory / "configuration_custom.py").write_text(
        payload + f"from transformers import {names[0]}\n\n\nclass CustomConfig({names[0]}):\n    model_type = {model_type!r}\n")
    (directory / "modeling_custom.py").write_text(
        payload + f"from transformers import {names[1]}\n\nfrom .configuration_custom import CustomConfig\n\n\n"
        f"class CustomModel({names[1]}):\n    config_class = CustomConfig\n")
    cfg.update(model_type=model_type, architectures=["CustomModel"],
               auto_map={"AutoConfig": "configuration_custom.CustomConfig", "AutoModel": "modeling_custom.CustomModel"})
    (directory / "config.json").write_text(json.dumps(cfg, indent=1))
    return directory
