"""``pal-mm heads``: list the registered head types (``--model`` of ``pal-mm train``)."""

from __future__ import annotations

from . import _common as c


def add_parser(sub):
    return c.add_command(sub, "heads", "list registered head types", "  pal-mm heads\n")


def run(args) -> int:
    from ..heads import get_head_class, list_heads

    rows = [(name, get_head_class(name).description) for name in list_heads()]
    width = max(len(n) for n, _ in rows)
    for name, text in rows:
        print(f"{name.ljust(width)}  {text}")
    return 0
