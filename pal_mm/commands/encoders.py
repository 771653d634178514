"""``pal-mm encoders``: list registered encoders."""

from __future__ import annotations

from . import _common as c


def add_parser(sub):
    p = c.add_command(sub, "encoders", "list registered encoders", "  pal-mm encoders\n")
    return p


def run(args) -> int:
    from encoders import get_encoder_class, list_encoders

    rows = [("name", "prompt", "item", "dims (prompt/item)", "weights")]
    for name in list_encoders():
        cls = get_encoder_class(name)
        rows.append((name, getattr(cls, "prompt_modality", "?"), getattr(cls, "item_modality", "?"),
                     getattr(cls, "dims", "") or "from data", getattr(cls, "weights_source", "")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r[:4], widths)) + "  " + str(r[4]))
    return 0
