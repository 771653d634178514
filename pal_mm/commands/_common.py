"""Helpers shared by the subcommands: YAML configs, encoder arguments, the embedding cache,
atomic output directories."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Iterator

import yaml

from encoders.atomic import output_dir

from ..errors import PalMMError

INTERNAL = {"_run", "command", "config"}


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="read any flag from a YAML file (command-line flags win)")


def apply_yaml_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; if ``--config FILE`` is given, its keys become the subcommand's defaults
    (so flags given on the command line win) and the arguments are parsed again."""
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if not path:
        return args
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise PalMMError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise PalMMError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise PalMMError(f"{path}: a config file must be a mapping of flag names to values")
    sub = _subparser(parser, args.command)
    known = {a.dest for a in sub._actions} - INTERNAL
    defaults = {}
    for key, value in cfg.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in known:
            raise PalMMError(f"{path}: unknown key {key!r} for `pal-mm {args.command}`")
        defaults[dest] = value
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise PalMMError(f"unknown command {name}")


def require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) in (None, "")]
    if missing:
        raise PalMMError(f"`pal-mm {args.command}` needs {', '.join(missing)} (on the command line or in --config)")


def resolved_config(args: argparse.Namespace) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in INTERNAL}


# ----- encoders and cache -------------------------------------------------------------------
def add_encoder_flags(p: argparse.ArgumentParser, default: str | None = "precomputed") -> None:
    p.add_argument("--encoder", default=default, help="registered encoder name (see `pal-mm encoders`)")
    p.add_argument("--encoder-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the encoder, e.g. pooling=mean (repeatable)")


def add_cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")


def encoder_kwargs(items: list[str] | dict) -> dict:
    if isinstance(items, dict):  # from a YAML config
        return dict(items)
    out = {}
    for item in items:
        if "=" not in item:
            raise PalMMError(f"--encoder-arg expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def make_encoder(args: argparse.Namespace):
    from encoders import create_encoder

    return create_encoder(args.encoder, **encoder_kwargs(args.encoder_arg))


def make_cache(args: argparse.Namespace):
    """The on-disk embedding cache ($PAL_MM_CACHE), or None with --no-cache."""
    if getattr(args, "no_cache", False):
        return None
    from encoders.cache import EmbeddingCache

    return EmbeddingCache()


def load_data(path: str, encoder=None):
    """Load preference data; conversational rows use the encoder's chat template if it has one."""
    from ..data import PreferenceData

    return PreferenceData.load(path, chat_tokenizer=getattr(encoder, "tokenizer", None))


# ----- outputs --------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it replaces ``out``, on any error
    it is removed, so a failed command leaves nothing behind."""
    target = Path(out)
    if target.exists() and not overwrite:
        raise PalMMError(f"{target}: output directory exists (pass --overwrite to replace it)")
    with output_dir(target) as tmp:
        yield tmp


def write_run_config(directory: Path, args: argparse.Namespace) -> None:
    (directory / "run_config.yaml").write_text(yaml.safe_dump(resolved_config(args), sort_keys=True))


