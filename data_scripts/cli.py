"""What every builder's ``main`` shares: a bad source or output path is one line on stderr and
exit code 2, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from encoders.errors import EncoderError
from pal_mm.ingest import first_line, shown


def run_builder(body: Callable[[], object]) -> int:
    """Run ``body()``; :class:`~pal_mm.errors.PalMMError` (and the encoder layer's errors) and
    OS errors (an unwritable ``--out``) become ``error: ...`` on stderr and return 2."""
    try:
        body()
    except EncoderError as e:  # PalMMError / DataError build on it
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {shown(str(e.filename or ''))}: cannot write ({first_line(e)})", file=sys.stderr)
        return 2
    return 0
