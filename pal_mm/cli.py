"""``pal-mm``: a thin command line over the library. Each subcommand lives in its own module in
``pal_mm/commands/`` with ``add_parser(subparsers)`` and ``run(args) -> int``.

Every user-facing problem raises :class:`PalMMError`; here it becomes one line on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from encoders.errors import EncoderError

COMMANDS = ["train", "adapt", "eval", "score", "encoders", "embed", "export", "convert", "score-images", "generate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pal-mm", description="Personalised reward models with PAL (text and images).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"pal_mm.commands.{name.replace('-', '_')}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .commands._common import apply_yaml_config

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = apply_yaml_config(parser, argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except EncoderError as e:  # PalMMError and the encoder layer's errors
        print(f"pal-mm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pal-mm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
