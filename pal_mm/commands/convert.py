"""``pal-mm convert``: PAL-reference or Pick-a-Pic data to canonical pal-mm JSON lines."""

from __future__ import annotations

from ..convert import FORMATS, convert_file
from ..errors import PalMMError
from . import _common as c


def add_parser(sub):
    p = c.add_command(sub, "convert", "convert PAL-reference or Pick-a-Pic data to pal-mm rows (user_id, prompt, chosen, rejected)",
                      "  pal-mm convert --from pal-reference --data ref.jsonl --out pairs.jsonl\n"
                      "  pal-mm convert --from pickapic --data yuvalkirstain/pickapic_v2:validation_unique --max-rows 1000 --out pick.jsonl\n")
    p.add_argument("--from", dest="source_format", metavar="FORMAT", help=f"input format: {' | '.join(FORMATS)}")
    p.add_argument("--data", help="input rows: .jsonl/.json/.csv/.parquet, a save_to_disk directory or a Hub dataset (name[:split])")
    p.add_argument("--out", help="output .jsonl file")
    p.add_argument("--images-dir", default=None, help="pickapic: where to write the images (default: OUT_images/ next to OUT)")
    p.add_argument("--max-rows", default=None, help="read at most this many input rows")
    p.add_argument("--split", default="train", help="split of a Hub dataset or a save_to_disk DatasetDict (default: train)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def run(args) -> int:
    if not args.source_format:
        raise PalMMError(f"`pal-mm convert` needs --from ({' | '.join(FORMATS)})")
    c.require(args, "data", "out")
    max_rows = None
    if args.max_rows is not None:
        try:
            max_rows = int(args.max_rows)
        except (TypeError, ValueError):
            raise PalMMError(f"--max-rows must be an integer, got {args.max_rows!r}") from None
    counts = convert_file(args.source_format, args.data, args.out, image_dir=args.images_dir, max_rows=max_rows,
                          split=args.split, overwrite=args.overwrite)
    extra = f", {counts['images']} images in {counts['image_dir']}" if "image_dir" in counts else ""
    print(f"wrote {counts['pairs']} pairs to {args.out} ({counts['rows_read']} rows read, "
          f"{counts.get('ties_dropped', 0)} ties dropped){extra}")
    return 0
