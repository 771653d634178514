"""``pal-mm push``: upload a model directory (a full PAL model or an exported one-user reward model) to
the Hugging Face Hub.

The folder is verified first (checksums, tensors, users: what loading checks) without building its
encoder, then its model files are uploaded in one commit: ``config.json``, ``model.safetensors``,
``users.json``, ``encoder.safetensors`` (when fine-tuned) and the model card ``README.md``. Run
files (``run_config.yaml``, ``metrics.jsonl``...) stay local, and so do local file paths: the
uploaded ``config.json`` drops the ``*_file`` / ``*_path`` / ``*_dir`` entries of its ``data``
section (the model card never has them). ``from_pretrained("ID")`` loads the result.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..errors import PalMMError
from . import _common as c

EXAMPLES = """\
  pal-mm push --model runs/m --repo-id me/pal-summaries                  # token from `hf auth login` / $HF_TOKEN
  pal-mm push --model rm_alice --repo-id me/rm-alice --private --commit-message "alice, K=2"
  pal-mm push --model runs/m --repo-id me/pal-summaries --branch v2      # an existing branch of the repo
"""
LOCAL_KEYS = ("_file", "_path", "_dir")


def add_parser(sub):
    p = c.add_command(sub, "push", "upload a model directory (PAL or exported) to the Hugging Face Hub", EXAMPLES)
    p.add_argument("--model", help="model directory to upload (a full PAL model or an exported reward model)")
    p.add_argument("--repo-id", help="Hub repository, e.g. me/pal-summaries (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository as private (default: public, or the "
                                                          "organisation's default)")
    p.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN or the one saved by `hf auth login`; "
                                                 "a token on the command line ends up in your shell history)")
    p.add_argument("--branch", default=None, help="branch to commit to (default: main)")
    p.add_argument("--commit-message", default=None, help="commit message (default: 'Upload pal-mm model')")
    return p


def model_files(directory: Path) -> list[str]:
    """Verify a model directory without building its encoder; the names of the files to upload."""
    from ..export import read_export_config
    from ..hub import CARD_NAME, CONFIG_NAME, read_config, verify_files
    from ..model import read_pal_dir

    cfg = read_config(directory)
    if cfg.get("pal_mm_format") == "personal-reward-model":
        verify_files(directory, read_export_config(directory))
    else:
        read_pal_dir(directory)
    files = sorted(cfg.get("files") or {})
    return [CONFIG_NAME, *files, *([CARD_NAME] if (directory / CARD_NAME).is_file() else [])]


def public_config(config: dict) -> dict:
    """``config.json`` without local file paths (the checksums cover the other files, not this one)."""
    data = config.get("data")
    if isinstance(data, dict):
        config = {**config, "data": {k: v for k, v in data.items() if not str(k).endswith(LOCAL_KEYS)}}
    return config


def push_directory(directory: Path, repo_id: str, private: bool = False, token: str | None = None,
                   branch: str | None = None, commit_message: str | None = None) -> str:
    """Upload the verified model files of ``directory`` to ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi

    from ..hub import CONFIG_NAME, looks_like_repo_id, read_config, strict_dumps

    if not looks_like_repo_id(repo_id):
        raise PalMMError(f"--repo-id must look like OWNER/NAME, got {repo_id!r}")
    names = model_files(directory)
    with tempfile.TemporaryDirectory(prefix="pal-mm-push-") as tmp:
        staging = Path(tmp)
        for name in names:
            if name != CONFIG_NAME:
                shutil.copyfile(directory / name, staging / name)
        (staging / CONFIG_NAME).write_text(strict_dumps(public_config(read_config(directory))) + "\n")
        try:
            api = HfApi(token=token)
            repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
            url = api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(staging), revision=branch,
                                    commit_message=commit_message or "Upload pal-mm model")
        except Exception as e:  # network, authentication, permissions
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise PalMMError(f"{repo_id}: upload failed ({type(e).__name__}: {text})") from None
    return str(getattr(url, "commit_url", url))


def run(args) -> int:
    c.require(args, "model", "repo_id")
    directory = Path(args.model).expanduser()
    if not directory.is_dir():
        raise PalMMError(f"{args.model}: no such model directory")
    url = push_directory(directory, args.repo_id, private=args.private, token=args.token, branch=args.branch,
                         commit_message=args.commit_message)
    print(f"pushed {args.model} to {args.repo_id}: {url}")
    return 0
