"""The browser demo: its callbacks as plain Python, the CLI's one-line errors, the served page driven
with gradio_client (a simulated person of one group answers 5 pairs), and a headless-chromium
screenshot (slow; skipped without chromium). A tiny PAL-B K = 2 model of two opposed groups."""

from __future__ import annotations

import copy
import socket
import sys
import zipfile

import numpy as np
import pytest

from data_scripts.synthetic import make_pairs
from encoders import create_encoder
from encoders.atomic import write_jsonl
from experiments.demo.screenshot import find_chromium
from experiments.demo.simulate import answer_as, run_person
from pal_mm import PALConfig, PreferenceData, TrainConfig, fit
from pal_mm.cli import main
from pal_mm.demo import Demo, kendall_tau
from pal_mm.errors import PalMMError
from pal_mm.export import PersonalRewardModel
from pal_mm.query import read_pool

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GROUP = "proto0"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained tiny model (saved too) and a pool: 8 prompts x 5 items, every pair of items."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=8)
    protos = np.stack([v, -v]) / np.linalg.norm(v)
    g = np.random.default_rng(1).random(24) < 0.5
    w = np.where(g[:, None], [0.95, 0.05], [0.05, 0.95])
    kw = {"prompt_dim": 4, "beta": 10.0}
    train = PreferenceData.from_rows(make_pairs(protos, w, 40, seed=1, **kw))
    val = PreferenceData.from_rows(make_pairs(protos, w, 12, seed=2, **kw))
    tc = TrainConfig(epochs=20, batch_size=64, lr_users=5e-2, lr_projector=3e-3, seed=0, progress=False)
    model = fit(train, val, create_encoder("precomputed"), PALConfig(model_type="pal-b", k=2), tc)
    out = tmp_path_factory.mktemp("demo")
    model.save_pretrained(out / "model")
    rows = []
    for p in range(8):
        prompt = [round(float(x), 5) for x in rng.normal(size=4)]
        items = rng.normal(size=(5, 8))
        items = [[round(float(x), 5) for x in it / np.linalg.norm(it)] for it in items]
        rows += [{"user_id": "pool", "prompt": prompt, "response_a": items[i], "response_b": items[j]}
                 for i in range(5) for j in range(i + 1, 5)]
    write_jsonl(out / "pool.jsonl", rows)
    return {"model": model, "dir": out}


def make_demo(world) -> Demo:
    return Demo(copy.deepcopy(world["model"]), read_pool(world["dir"] / "pool.jsonl"))


def test_kendall_tau_by_hand():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_callbacks_place_a_simulated_person_with_their_group(world, tmp_path):
    demo = make_demo(world)
    assert len(demo.pairs) == 80 and len(demo.ranked_prompts) == 8 and sorted(demo.group_weights()) == ["proto0", "proto1"]
    curve = run_person(demo, GROUP, 5)
    assert len(curve) == 6 and curve[-1]["closest"] == GROUP
    assert curve[-1]["distance"] < curve[0]["distance"] - 0.2  # the weights moved toward the group's
    assert curve[-1]["tau"] > 0.8 and curve[-1]["tau"] > curve[0]["tau"]
    user = demo.model.users[-1]
    assert user.startswith("demo-") and demo.seen_users == world["model"].users  # the session's user is not "seen"
    # the view, the picture, the top items
    s = {"user": user, "asked": [], "answers": 5, "pair": 0, "history": [demo.model.user_weights(user)]}
    view = demo.view(s)
    assert view["answers"] == 5 and len(view["weights"]) == 2 and all(x > 0 for x in view["std"])
    assert view["pair"]["a"] == demo.pairs.chosen[0]
    fig = demo.position_figure(s)
    assert fig.axes and fig.axes[0].get_title().startswith("where you sit")
    prompt, best = demo.top_items(view["weights"], 1, k=3)
    assert prompt == demo.pairs.prompts[10] and len(best) == 3 and best[0][1] >= best[1][1] >= best[2][1]
    # save my reward model: a zip of a one-user reward model that scores like the session's user
    path = demo.export_zip(s, tmp_path)
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp_path / "unzipped")
    rm = PersonalRewardModel.from_pretrained(tmp_path / "unzipped" / f"pal-reward-model-{user}")
    items = list(demo.pairs.chosen[:3])
    assert rm(demo.pairs.prompts[0], items) == pytest.approx(demo.model.reward(demo.pairs.prompts[0], items, user=user), abs=1e-5)
    # skip: no update, another pair
    s2 = demo.start()
    s3 = demo.answer(s2, "skip")
    assert s3["answers"] == 0 and s3["asked"] == [s2["pair"]] and s3["pair"] != s2["pair"]


def test_score_and_users_tabs(world, tmp_path):
    demo = make_demo(world)
    p, items = demo.pairs.prompts[0], [demo.pairs.chosen[0], demo.pairs.rejected[0], demo.pairs.rejected[3]]
    table = demo.score(p, items, users=["user000"], weights="0.5, 0.5")
    assert table["headers"] == ["response", "user000: reward", "user000: rank", "weights 0.5, 0.5: reward",
                                "weights 0.5, 0.5: rank"]
    assert sorted(row[2] for row in table["data"]) == [1, 2, 3]
    assert [row[1] for row in table["data"]] == pytest.approx(demo.model.reward(p, items, user="user000"), abs=1e-4)
    text = demo.users_report(tmp_path / "users.png")
    assert "pal-b with K = 2 prototypes, 24 users" in text and (tmp_path / "users.png").stat().st_size > 1000


def test_bad_input_is_one_line(world, tmp_path, capsys, monkeypatch):
    demo = make_demo(world)
    s = demo.start()
    for call, needle in [(lambda: demo.answer(s, "c"), "answer must be one of"),
                         (lambda: demo.export_zip(s, tmp_path), "answer at least one pair first"),
                         (lambda: demo.score("p", ["x"]), "choose at least one user"),
                         (lambda: demo.score([0.0] * 4, [[0.0] * 8], weights="a,b"), "comma-separated numbers"),
                         (lambda: demo.score([0.0] * 4, [[0.0] * 8], weights="0.7, 0.7"), "weights")]:
        with pytest.raises(PalMMError, match=needle):
            call()
    model = str(world["dir"] / "model")
    assert main(["demo", "--model", model]) == 2
    assert "give the candidate pairs with --pool" in capsys.readouterr().err
    assert main(["demo", "--model", model, "--pool", "nope.jsonl", "--port", "0"]) == 2
    assert "--port must be between" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # gradio not installed
    assert main(["demo", "--model", model, "--pool", str(world["dir"] / "pool.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == 'pal-mm: error: the demo needs gradio: pip install "pal-mm[demo]"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(world, tmp_path):
    pytest.importorskip("gradio")
    from pal_mm.demo_app import build_app, launch

    demo = make_demo(world)
    app = build_app(demo, work_dir=tmp_path / "work")
    url = launch(app, "127.0.0.1", free_port(), block=False, quiet=True)
    yield demo, url
    app.close()


def test_served_page_driven_with_gradio_client(served, tmp_path):
    from gradio_client import Client

    demo, url = served
    target = demo.group_weights()[GROUP]
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    out = client.predict(demo.ranked_prompts[0], api_name="/start")
    first = out[-1]
    view = first
    for _ in range(5):
        choice = answer_as(demo, view["pair"], target)
        view = client.predict(demo.ranked_prompts[0], api_name=f"/answer_{choice}")[-1]
    assert view["answers"] == 5 and view["user"] == first["user"] and view["closest_group"] == GROUP
    assert view["distance_to_groups"][GROUP] < first["distance_to_groups"][GROUP] - 0.2
    k = max(range(2), key=target.__getitem__)  # the group's prototype: more weight on it than before
    assert view["weights"][k] > first["weights"][k] + 0.2
    zipped = client.predict(api_name="/save")
    with zipfile.ZipFile(zipped) as z:
        z.extractall(tmp_path / "unzipped")
    rm = PersonalRewardModel.from_pretrained(tmp_path / "unzipped" / f"pal-reward-model-{view['user']}")
    assert rm.weights == pytest.approx(view["weights"], abs=1e-3)
    p, items = demo.pairs.prompts[0], [demo.pairs.chosen[0], demo.pairs.rejected[0]]
    assert rm(p, items) == pytest.approx(demo.model.reward(p, items, user=view["user"]), abs=1e-5)
    table = client.predict(str(p), "\n".join(str(x) for x in items), [], [], "0.5, 0.5", api_name="/score")
    assert len(table["data"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="Debian's chromium is not installed")
def test_headless_screenshot(served, tmp_path):
    from experiments.demo.screenshot import take

    _, url = served
    png = tmp_path / "demo.png"
    assert take(url, png, clicks=["I prefer A"], width=1000, height=900) > 20_000  # a rendered page, not a blank one
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
