"""``pal-mm``: a thin command line over the library. Each subcommand lives in its own module in
``pal_mm/commands/`` with ``add_parser(subparsers)`` and ``run(args) -> int``.

Every user-facing problem (bad data, arguments, model directories, unwritable outputs) becomes one
line on stderr and exit code 2; nothing is left half-written. ``pal-mm --help`` imports no torch.
"""

from __future__ import annotations

import importlib
import sys

from encoders.errors import EncoderError

from .commands._common import CommandParser, apply_yaml_config, normalize_json_flag, verbosity
from .version import __version__

COMMANDS = ["train", "adapt", "eval", "score", "query", "inspect", "encoders", "heads", "embed", "export", "convert", "score-images",
            "generate", "split", "push"]


def build_parser() -> tuple[CommandParser, dict]:
    parser = CommandParser(prog="pal-mm", description="Personalised reward models with PAL (text and images).")
    parser.add_argument("--version", action="version", version=f"pal-mm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    subparsers = {}
    for name in COMMANDS:
        module = importlib.import_module(f"pal_mm.commands.{name.replace('-', '_')}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
        subparsers[name] = p
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    parser, subparsers = build_parser()
    argv = normalize_json_flag(list(sys.argv[1:] if argv is None else argv))
    try:
        try:
            args = apply_yaml_config(parser, subparsers, argv)
        except SystemExit as e:  # --help, --version, or a usage error (already printed on one line)
            return int(e.code or 0)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        with verbosity(args):
            return int(args._run(args) or 0)
    except EncoderError as e:  # PalMMError and the encoder layer's errors
        print(f"pal-mm: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RecursionError) as e:
        print(f"pal-mm: error: the input is too large or too deeply nested ({type(e).__name__})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pal-mm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
