"""``pal-mm query``: the unlabelled pairs to ask each user next (active querying)."""

from __future__ import annotations

from pathlib import Path

from ..errors import PalMMError
from . import _common as c

EXAMPLES = """\
  pal-mm query --model runs/m --pool pool.jsonl --n 2 --out ask.jsonl
  pal-mm query --model runs/m --pool pool.jsonl --n 2 --exclude answered.jsonl --out ask.jsonl --overwrite
  # a round: ask -> the user labels ask.jsonl -> append to answered.jsonl -> pal-mm adapt on answered.jsonl
"""


def add_parser(sub):
    p = c.add_command(sub, "query", "pick the most informative unlabelled pairs to ask each user (active querying)", EXAMPLES)
    p.add_argument("--model", help="model directory (or Hub repo id); needs a prior over users (trained with pal-mm >= 0.2)")
    p.add_argument("--pool", help="unlabelled pairs: columns user_id, prompt, response_a, response_b (text, image paths or vectors)")
    p.add_argument("--n", type=int, help="pairs to pick per user")
    p.add_argument("--exclude", help="pairs never to ask again (labelled chosen/rejected rows or pool rows; same user, "
                                     "prompt and responses in either order)")
    p.add_argument("--out", help="where to write the picked rows (.jsonl, .json or .csv), in the pool's format")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--strategy", default="eig", choices=["eig", "uncertainty", "random"],
                   help="expected information gain about the user's weights (default), the answer closest to a coin "
                        "flip, or random")
    p.add_argument("--seed", type=int, default=0, help="seed of --strategy random (default: 0)")
    c.add_runtime_flags(p)
    return p


def run(args) -> int:
    c.require(args, "model", "pool", "n", "out")
    if args.n < 1:
        raise PalMMError(f"--n must be a positive integer, got {args.n}")
    out = Path(args.out)
    from ..query import OUT_SUFFIXES

    if out.suffix.lower() not in OUT_SUFFIXES:
        raise PalMMError(f"--out {args.out}: write the queries as {', '.join(OUT_SUFFIXES)}")
    if out.exists() and not args.overwrite:
        raise PalMMError(f"{out}: exists (pass --overwrite to replace it)")
    if out.is_dir():
        raise PalMMError(f"{out}: is a directory")
    c.check_writable_parent(out)
    from ..query import query_rows, read_exclude, read_pool, select_queries, write_rows

    model = c.load_pal_model(args)
    tokenizer = getattr(model.encoder, "tokenizer", None)
    pool = read_pool(args.pool, tokenizer)
    exclude = read_exclude(args.exclude, tokenizer) if args.exclude else set()
    picked = select_queries(model, pool, args.n, exclude, strategy=args.strategy, seed=args.seed, cache=c.make_cache(args))
    rows = query_rows(pool, picked, out)
    write_rows(rows, out)
    known = sum(u in set(model.users) for u in picked)
    print(f"picked {len(rows)} pairs for {len(picked)} users ({known} known to the model, {len(picked) - known} new) "
          f"-> {args.out}")
    return 0
