"""``pal-mm split``: one preference file -> a dataset directory with seen users (train / val / test per
user) and held-out new users with nested few-shot sets (see :mod:`pal_mm.holdout`)."""

from __future__ import annotations


from ..errors import PalMMError
from . import _common as c

EXAMPLES = """\
  pal-mm split --data pairs.jsonl --out data/          # 20% new users; 10% / 20% of each seen user's pairs to val / test
  pal-mm split --data pairs.jsonl --out data/ --new-users 5 --shots 2,5,10 --test-pairs 10 --seed 1
  # then: pal-mm train --data data/seen_train.jsonl --val data/seen_val.jsonl ... --out runs/m
  #       pal-mm eval --model runs/m --data data/      # seen users, and new users adapted on n pairs each
"""


def _shots(text) -> list[int]:
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        return [int(str(x).strip()) for x in items if str(x).strip()]
    except ValueError:
        raise PalMMError(f"--shots expects comma-separated integers, got {text!r}") from None


def add_parser(sub):
    p = c.add_command(sub, "split", "split one preference file into seen-user train/val/test and held-out new users "
                                    "(with few-shot sets)", EXAMPLES)
    p.add_argument("--data", help="the pairs (file, save_to_disk dir, or Hub dataset name[:split])")
    p.add_argument("--out", help="output dataset directory: seen_train/seen_val/seen_test/unseen.jsonl, "
                                 "unseen_n{N}_train/test.jsonl, meta.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--new-users", type=c.number_type(float), default=0.2,
                   help="users held out as new users: a fraction in [0, 1) or a count >= 1 (default: 0.2)")
    p.add_argument("--val", type=c.number_type(float), default=0.1,
                   help="fraction of each seen user's pairs for validation (default: 0.1)")
    p.add_argument("--test", type=c.number_type(float), default=0.2,
                   help="fraction of each seen user's pairs for testing (default: 0.2)")
    p.add_argument("--shots", default="1,5,10",
                   help="few-shot sizes n for the new users: n pairs to adapt on, the rest to test (default: 1,5,10)")
    p.add_argument("--test-pairs", type=int, default=None,
                   help="test every new user on their last T pairs for every n (default: all pairs after the first n)")
    p.add_argument("--seed", type=int, default=0, help="seed of the user choice and of every shuffle (default: 0)")
    return p


def run(args) -> int:
    c.require(args, "data", "out")
    from ..holdout import HoldoutConfig, holdout_splits

    cfg = HoldoutConfig(new_users=args.new_users, val=args.val, test=args.test, shots=_shots(args.shots),
                        test_pairs=args.test_pairs, seed=args.seed)
    cfg.check()
    target = c.check_output(args.out, args.overwrite)
    from ..ingest import read_rows
    from ..splits import write_dataset

    rows, base_dir, label = read_rows(args.data)
    splits, extra, meta = holdout_splits(rows, label, base_dir, target, cfg)
    with c.atomic_output_dir(target, args.overwrite) as tmp:
        write_dataset(tmp, splits, meta, extra_files=extra)
    counts = ", ".join(f"{name} {len(r)}" for name, r in splits.items())
    print(f"{meta['users']['seen']} seen users, {len(meta['users']['new'])} new users; pairs: {counts}; "
          f"few-shot n = {', '.join(str(n) for n in meta['few_shot']['users']) or 'none'} -> {args.out}")
    return 0
