"""What the subcommands share: flags generated from the config dataclasses, YAML configs, the
encoder / device / cache flags, JSON output, loading models and data, atomic output directories.

Nothing here imports torch or an encoder at import time: ``pal-mm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from ..errors import PalMMError

log = logging.getLogger("pal_mm.cli")
INTERNAL = {"_run", "command", "config"}


class CommandParser(argparse.ArgumentParser):
    """argparse with one-line errors (``pal-mm CMD: error: ...``, exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_command(sub, name: str, help: str, examples: str = "", description: str | None = None) -> CommandParser:
    """A subcommand parser with the flags every command has (--config, --quiet, -v) and examples."""
    p = sub.add_parser(name, help=help, description=description or help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=("examples:\n" + examples.rstrip()) if examples else None)
    p.add_argument("--config", metavar="FILE.yaml", help="read any flag of this command from a YAML file (command-line flags win)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug)")
    return p


# ----- flags from dataclasses ------------------------------------------------------------------
def _kind(f) -> type:
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if name in text.split(" | ")[0] or text.startswith(name):
            return kind
    return str


def number_type(kind: type):
    """An argparse ``type`` for ``int`` or ``float`` flags: a one-line error for text that is not a number
    (floats must also be finite); ranges are checked where the value is used."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _or_auto(parse):
    """A flag type that also takes the word ``auto`` (fields with ``metadata["auto"]``)."""

    def parse_or_auto(text: str):
        return "auto" if text.strip().lower() == "auto" else parse(text)

    parse_or_auto.__name__ = getattr(parse, "__name__", "value")
    return parse_or_auto


def add_fields(p, cls, only: Iterable[str] | None = None, skip: Iterable[str] = (), flags: dict | None = None,
               defaults: dict | None = None) -> None:
    """One flag per field of the config dataclass ``cls``: its default, help text and choices come from
    the field (``metadata["help"]``, ``["choices"]``); fields with ``metadata["cli"] = False`` are skipped."""
    only = set(only) if only is not None else None
    for f in fields(cls):
        if (only is not None and f.name not in only) or f.name in set(skip) or f.metadata.get("cli") is False:
            continue
        default = (defaults or {}).get(f.name, f.default)
        flag = (flags or {}).get(f.name, "--" + f.name.replace("_", "-"))
        kind = _kind(f)
        kw: dict[str, Any] = {"dest": _dest(flag), "default": default,
                              "help": f"{f.metadata.get('help', '')} (default: {default})"}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
        else:
            kw["type"] = number_type(kind) if kind in (int, float) else str
            if f.metadata.get("auto"):
                kw["type"] = _or_auto(kw["type"])
            kw["metavar"] = f.metadata.get("metavar") or f.name.split("_")[-1].upper()
            if "choices" in f.metadata:
                kw["choices"] = list(f.metadata["choices"])
                kw.pop("metavar")
        p.add_argument(flag, **kw)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def config_from_args(cls, args: argparse.Namespace, flags: dict | None = None, **values):
    """The dataclass built from the parsed flags (``flags``: the renames given to :func:`add_fields`;
    ``values`` override); its checks run here, so a bad value fails before any work starts."""
    kw = {}
    for f in fields(cls):
        dest = _dest((flags or {}).get(f.name, f.name))
        if hasattr(args, dest):
            kw[f.name] = getattr(args, dest)
    return cls(**{**kw, **values})


# ----- YAML configs ------------------------------------------------------------------------------
def load_yaml_config(path: str) -> dict:
    try:
        cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PalMMError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise PalMMError(f"{path}: a directory, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PalMMError(f"{path}: cannot read the config file ({type(e).__name__})") from None
    except yaml.YAMLError as e:  # includes unsafe tags (safe_load refuses to construct them)
        raise PalMMError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise PalMMError(f"{path}: a config file must be a mapping of flag names to values")
    return cfg


def apply_yaml_config(parser: argparse.ArgumentParser, subparsers: dict[str, argparse.ArgumentParser],
                      argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE`` its keys become the subcommand's defaults (flags on the
    command line win) and ``argv`` is parsed again. Unknown keys are an error."""
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if not path:
        return args
    cfg = load_yaml_config(path)
    sub = subparsers[args.command]
    known = set(vars(sub.parse_known_args([])[0])) - INTERNAL
    defaults = {}
    for key, value in cfg.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in known:
            raise PalMMError(f"{path}: unknown key {key!r} for `pal-mm {args.command}`")
        defaults[dest] = value
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)


def require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) in (None, "", [])]
    if missing:
        raise PalMMError(f"`pal-mm {args.command}` needs {', '.join(missing)} (on the command line or in --config)")


def resolved_config(args: argparse.Namespace) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in INTERNAL}


# ----- encoders, devices, cache ---------------------------------------------------------------------
def add_encoder_flags(p, default: str | None = "precomputed") -> None:
    p.add_argument("--encoder", default=default, help=f"registered encoder name, see `pal-mm encoders` (default: {default})")
    p.add_argument("--encoder-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the encoder, e.g. pooling=mean (repeatable; VALUE is parsed as YAML)")


def add_runtime_flags(p, cache: bool = True) -> None:
    """--device, --dtype, --trust-remote-code (and --cache-dir, --no-cache) for commands that build an encoder."""
    p.add_argument("--device", default=None, help="where the encoder (and head) run: cuda, cuda:1, cpu... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="encoder weights dtype (default: the encoder's own, float32 for built-ins)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow an encoder to run code shipped with its model files (never taken from a saved config)")
    if cache:
        p.add_argument("--cache-dir", default=None, help="embedding cache root (default: $PAL_MM_CACHE or ~/.cache/pal-mm)")
        p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")


def encoder_kwargs(items: list[str] | dict) -> dict:
    if isinstance(items, dict):  # from a YAML config
        return dict(items)
    out = {}
    for item in items or []:
        if "=" not in item:
            raise PalMMError(f"--encoder-arg expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise PalMMError(f"--encoder-arg {key}: invalid value ({str(e).splitlines()[0]})") from None
    return out


def runtime_options(args: argparse.Namespace) -> dict:
    """Device / dtype overrides for an encoder built from a saved model."""
    return {k: getattr(args, k) for k in ("device", "dtype") if getattr(args, k, None) is not None}


def make_encoder(args: argparse.Namespace):
    """The encoder named by --encoder / --encoder-arg; code execution only with --trust-remote-code."""
    from encoders import encoder_from_config

    return encoder_from_config(args.encoder, encoder_kwargs(args.encoder_arg),
                               trust_remote_code=bool(getattr(args, "trust_remote_code", False)), **runtime_options(args))


def make_cache(args: argparse.Namespace):
    """The on-disk embedding cache (``--cache-dir``, $PAL_MM_CACHE), or None with ``--no-cache``."""
    if getattr(args, "no_cache", False):
        return None
    from encoders.cache import EmbeddingCache

    return EmbeddingCache(getattr(args, "cache_dir", None))


def load_model(args: argparse.Namespace, path: str | None = None):
    """A full PAL model or an exported one-user reward model, with the command's runtime flags."""
    from ..export import load_reward_model

    model = load_reward_model(path or args.model, trust_remote_code=bool(getattr(args, "trust_remote_code", False)),
                              **runtime_options(args))
    log.info("loaded %s from %s (encoder %s)", type(model).__name__, path or args.model, model.encoder.name)
    return model


def load_pal_model(args: argparse.Namespace, path: str | None = None, users=None):
    """A full PAL model (with its user table), with the command's runtime flags. An exported one-user
    model is accepted too: it becomes a PAL model whose ``users`` (default: the user it was exported
    for) all have its mixture (:func:`pal_mm.export.as_pal_model`)."""
    return as_pal(load_model(args, path), users)


def as_pal(model, users=None):
    """``model`` itself for a full PAL model; :func:`pal_mm.export.as_pal_model` for an exported one."""
    from ..export import PersonalRewardModel, as_pal_model

    return as_pal_model(model, users) if isinstance(model, PersonalRewardModel) else model


def load_data(path: str, encoder=None):
    """Load preference data; conversations are rendered now, as the encoder will see them
    (:mod:`pal_mm.conversation`), so a template that fails names its row."""
    from ..conversation import chat_tokenizer
    from ..data import PreferenceData

    data = PreferenceData.load(path, chat_tokenizer=chat_tokenizer(encoder))
    log.info("read %d pairs of %d users from %s (%s)", len(data), len(data.users), path,
             ", ".join(f"{k}: {v}" for k, v in data.kinds.items()))
    return data


# ----- outputs --------------------------------------------------------------------------------------
def add_json_flag(p, what: str) -> None:
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE.json",
                   help=f"{what} as JSON: to FILE.json when given, else to stdout")


def json_safe(obj: Any) -> Any:
    """A copy with NaN / infinity replaced by null, so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def emit_json(target: str | None, obj: Any) -> None:
    """Strict JSON to stdout (``-``) or, atomically, to a file."""
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False)
    if target in (None, "-"):
        print(text)
        return
    from encoders.atomic import write_text

    try:
        write_text(target, text + "\n")
    except OSError as e:
        raise PalMMError(f"{target}: cannot write ({e.strerror or type(e).__name__})") from None


def normalize_json_flag(argv: list[str]) -> list[str]:
    """``--json`` takes a file name only when the next word ends in ``.json``; otherwise it is a switch
    (so ``score-images --json a.png b.png`` keeps its images)."""
    out = []
    for i, word in enumerate(argv):
        if word == "--json":
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or nxt.startswith("-") or not nxt.lower().endswith(".json"):
                out.append("--json=-")
                continue
        out.append(word)
    return out


def fmt(x: Any, digits: int = 4) -> str:
    """A number for people: ``n/a`` for None or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it replaces ``out``, on any error it
    is removed, so a failed command leaves nothing behind."""
    from encoders.atomic import output_dir

    target = Path(out)
    if target.exists() and not overwrite:
        raise PalMMError(f"{target}: output directory exists (pass --overwrite to replace it)")
    check_writable_parent(target)
    with output_dir(target) as tmp:
        yield tmp


def check_writable_parent(target: Path) -> None:
    parent = target.expanduser().absolute().parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PalMMError(f"{target}: cannot write there ({probe} is not a writable directory)")


def write_run_config(directory: Path, args: argparse.Namespace) -> None:
    (directory / "run_config.yaml").write_text(yaml.safe_dump(resolved_config(args), sort_keys=True))


@contextlib.contextmanager
def verbosity(args: argparse.Namespace) -> Iterator[None]:
    """For one command: ``--quiet`` switches progress bars off (tqdm's TQDM_DISABLE and the
    encoders' bars); ``-v`` sets the log level to info, ``-vv`` to debug. Restored afterwards."""
    import logging

    from encoders.progress import progress_setting, set_progress

    level = {0: logging.WARNING, 1: logging.INFO}.get(getattr(args, "verbose", 0), logging.DEBUG)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    loggers = [logging.getLogger(name) for name in ("pal_mm", "encoders")]  # the library and its encoder layer
    saved = (os.environ.get("TQDM_DISABLE"), progress_setting(), [lg.level for lg in loggers])
    for lg in loggers:
        lg.setLevel(level)
    if getattr(args, "quiet", False):
        os.environ["TQDM_DISABLE"] = "1"
        set_progress(False)
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved[0]
        set_progress(saved[1])
        for lg, lvl in zip(loggers, saved[2]):
            lg.setLevel(lvl)


def say(args: argparse.Namespace, message: str) -> None:
    """A progress message on stderr (silent with --quiet)."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def check_output(out: str | os.PathLike, overwrite: bool, resume: bool = False) -> Path:
    """Fail early (before any work) when ``out`` exists without --overwrite or cannot be written."""
    target = Path(out).expanduser()
    if len(os.fsencode(target.name)) > 200:
        raise PalMMError(f"{str(target)[:60]}...: output name too long ({len(os.fsencode(target.name))} bytes; at most 200)")
    if target.exists() and not overwrite:
        hint = " (it is complete: nothing to resume)" if resume else ""
        raise PalMMError(f"{target}: output directory exists{hint} (pass --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise PalMMError(f"{target}: exists and is not a directory")
    check_writable_parent(target)
    return target


class WorkDir:
    """Where a resumable command writes: ``directory`` (becomes --out), ``checkpoints`` inside it."""

    def __init__(self, directory: Path, resuming: bool):
        self.directory, self.resuming = directory, resuming
        self.checkpoints = directory / ".checkpoint"


@contextlib.contextmanager
def resumable_output_dir(target: Path, overwrite: bool, resume: bool, say=lambda m: None) -> Iterator[WorkDir]:
    """Like :func:`atomic_output_dir`, for training: the work folder ``.NAME.partial`` next to ``target``
    survives a kill (and Ctrl-C) with its checkpoints, so the same command plus ``--resume`` continues;
    without ``--resume`` the leftovers of an earlier run are removed. On success the checkpoints are
    dropped and the folder replaces ``target``; on an error it is removed."""
    import shutil

    from encoders.atomic import remove_dead_dirs, replace_dir

    remove_dead_dirs(target)
    work = target.with_name(f".{target.name}.partial")
    resuming = resume and (work / ".checkpoint" / "checkpoint.json").is_file()
    if work.exists() and not resuming:
        shutil.rmtree(work, ignore_errors=True)
        say(f"removed the leftovers of an earlier, unfinished run ({work})")
    elif resuming:
        say(f"resuming the run saved in {work}")
    elif resume:
        say("nothing to resume: training from the start")
    work.mkdir(parents=True, exist_ok=True)
    wd = WorkDir(work, resuming)
    try:
        yield wd
    except KeyboardInterrupt:
        say(f"interrupted: the last completed epoch is saved in {work}; run the same command with --resume to continue")
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(wd.checkpoints, ignore_errors=True)
    replace_dir(work, target)


def notice(message: str) -> None:
    """Something the user must know about (printed even with --quiet): a line on stderr."""
    print(f"pal-mm: {message}", file=sys.stderr, flush=True)
