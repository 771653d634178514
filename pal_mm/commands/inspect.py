"""``pal-mm inspect``: what a model learned: K, every user's weights with their uncertainty,
prototype usage, the prior over new users, calibration, data and training summary."""

from __future__ import annotations

from pathlib import Path

from ..errors import PalMMError
from . import _common as c

EXAMPLES = """\
  pal-mm inspect --model runs/m
  pal-mm inspect --model runs/m --json                     # {"k": K, "users": {USER_ID: [w_1, ..., w_K]}, "users_std": ...}
  pal-mm inspect --model runs/m --json info.json --plot users.png   # K = 3: simplex scatter; else stacked bars
"""


def add_parser(sub):
    p = c.add_command(sub, "inspect", "show K, every user's weights with their uncertainty, prototype usage and training summary",
                      EXAMPLES)
    p.add_argument("--model", help="model directory (or Hub repo id); the encoder is not loaded for a local directory")
    c.add_json_flag(p, "the summary")
    p.add_argument("--plot", metavar="FILE.png", help="write a picture of the users' weights (groups coloured when known)")
    p.add_argument("--trust-remote-code", action="store_true", help="(Hub models only) allow the encoder's own code")
    return p


def load_without_encoder(path: str, trust_remote_code: bool = False):
    """A PALModel for inspection: a local directory is read without building its encoder."""
    from ..model import PALModel, read_pal_dir

    directory = Path(path).expanduser()
    if not directory.is_dir():
        return PALModel.from_pretrained(path, trust_remote_code=trust_remote_code)
    saved = read_pal_dir(directory)
    model = PALModel(saved.head_config, None, saved.users, saved.groups)
    model.head, model.beliefs = saved.head, saved.beliefs
    model.metrics, model.data_info = saved.metrics, saved.data_info
    return model.eval()


def run(args) -> int:
    c.require(args, "model")
    if args.plot is not None:
        if Path(args.plot).suffix.lower() != ".png":
            raise PalMMError(f"--plot {args.plot}: the picture is a .png file")
        c.check_writable_parent(Path(args.plot))
    from ..export import is_personal_model_dir
    from ..inspection import describe, plot_users, text_report

    if is_personal_model_dir(args.model):  # one fixed mixture, no user table
        from ..export import PersonalRewardModel

        rm = PersonalRewardModel.from_pretrained(args.model)  # the encoder is built only when used
        info = {"k": rm.config.k, "model_type": rm.config.model_type, "users": {}, "users_std": None,
                "exported_for": rm.describe(), "weights": [round(w, 6) for w in rm.weights]}
        if args.plot is not None:
            raise PalMMError(f"{args.model}: an exported one-user reward model has no users to plot")
        if args.json is not None:
            c.emit_json(args.json, info)
            if args.json == "-":
                return 0
        print(f"{info['model_type']} with K = {info['k']} prototypes, exported for {info['exported_for']}: weights {info['weights']}")
        return 0
    model = load_without_encoder(args.model, args.trust_remote_code)
    info = describe(model)
    if args.plot is not None:
        plot_users(info, args.plot, model.user_weight_covariance() if model.users else None)
    if args.json is not None:
        c.emit_json(args.json, info)
        if args.json == "-":
            return 0
    print(text_report(info))
    if args.plot is not None:
        print(f"picture: {args.plot}")
    return 0
