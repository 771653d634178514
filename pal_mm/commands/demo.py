"""``pal-mm demo``: a local web page where a new user answers a few pairs and watches PAL place them
among the seen users (needs the ``demo`` extra: gradio)."""

from __future__ import annotations

from ..errors import PalMMError
from . import _common as c

EXAMPLES = """\
  pal-mm demo --model runs/m --pool pool.jsonl                  # http://127.0.0.1:7860
  pal-mm demo --model runs/m --pool pool.jsonl --port 8000 --max-pairs 200
  make demo TASK=summary        # trains (or reuses) a model on an embedded default and serves it with its pool
"""


def add_parser(sub):
    p = c.add_command(sub, "demo", "serve a local web page: a new user answers pairs and sees their place among the users",
                      EXAMPLES)
    p.add_argument("--model", help="model directory (or Hub repo id); needs a prior over users (pal-a, pal-b, lore)")
    p.add_argument("--pool", help="candidate pairs: columns user_id, prompt, response_a, response_b (as `pal-mm query`); "
                                  "labelled chosen/rejected rows are not accepted")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    p.add_argument("--max-pairs", type=int, default=400,
                   help="candidate pairs kept from the pool (a seeded sample when it has more; default: 400)")
    p.add_argument("--title", default="pal-mm: find your taste", help="page title (default: 'pal-mm: find your taste')")
    c.add_runtime_flags(p)
    return p


def run(args) -> int:
    c.require(args, "model")
    if not 1 <= args.port <= 65535:
        raise PalMMError(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_pairs < 1:
        raise PalMMError(f"--max-pairs must be a positive integer, got {args.max_pairs}")
    if args.pool is None:
        raise PalMMError(f"--model {args.model}: a pal-mm model does not keep its training pairs; give the candidate pairs "
                         "with --pool POOL (columns user_id, prompt, response_a, response_b)")
    from ..demo_app import build_app, launch, require_gradio

    require_gradio()  # before loading anything
    from ..demo import Demo
    from ..query import read_pool

    model = c.load_pal_model(args)
    pool = read_pool(args.pool, getattr(model.encoder, "tokenizer", None))
    demo = Demo(model, pool, max_pairs=args.max_pairs, cache=c.make_cache(args))
    app = build_app(demo, title=args.title)
    c.say(args, f"serving {args.model} with {len(demo.pairs)} candidate pairs on http://{args.host}:{args.port} (Ctrl+C stops)")
    launch(app, args.host, args.port, allowed_paths=demo.file_dirs(), quiet=args.quiet)
    return 0
