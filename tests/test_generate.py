"""Best-of-N per user: `pal-mm generate` with a tiny random Stable Diffusion pipeline saved
locally (no diffusion weights exist offline) and `pal-mm score-images`, end to end through
`pal_mm.cli.main`, on a PAL model trained on images with a tiny local CLIP (`hf-clip`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.testing import build_tiny_hf_clip
from encoders import create_encoder
from pal_mm import PALConfig, PALModel, PalMMError, PreferenceData, TrainConfig, fit
from pal_mm.cli import main
from pal_mm.generation import SHEET_NAME, contact_sheet, image_rewards, load_pipeline, rank, ranked_table, sample_images

from experiments.t2i.tiny_pipeline import build_tiny_pipeline

PROMPT = "a red apple on a table"
USERS = ("u_warm", "u_cool")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tinted_images(directory: Path, count: int = 12) -> list[Path]:
    """Noisy 32x32 images, half warm (red) and half cool (blue)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        base = np.array([200, 90, 60] if i % 2 == 0 else [60, 90, 200])
        arr = np.clip(base + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        paths.append(directory / f"img{i:02d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A saved tiny SD pipeline and a PAL-B (K=2) model (tiny local CLIP encoder) trained on image
    pairs where u_warm prefers the red image and u_cool the blue one."""
    root = tmp_path_factory.mktemp("generate")
    sd = root / "tiny-sd"
    build_tiny_pipeline(seed=0).save_pretrained(sd)
    clip = build_tiny_hf_clip(root / "tiny-clip")
    images = _tinted_images(root / "images")
    rng = np.random.default_rng(1)
    rows = []
    for user in USERS:
        for _ in range(24):
            warm, cool = images[2 * rng.integers(6)], images[2 * rng.integers(6) + 1]
            chosen, rejected = (warm, cool) if user == "u_warm" else (cool, warm)
            rows.append({"user_id": user, "prompt": PROMPT, "chosen": str(chosen), "rejected": str(rejected)})
    encoder = create_encoder("hf-clip", model_name_or_path=str(clip))
    model = fit(PreferenceData.from_rows(rows), None, encoder, PALConfig(model_type="pal-b", k=2, dim=16),
                TrainConfig(epochs=3, patience=0, progress=False))
    model.save_pretrained(root / "model")
    return {"root": root, "sd": sd, "model": root / "model"}


def _generate(assets, out: Path, *extra: str) -> int:
    return main(["generate", "--pipeline", str(assets["sd"]), "--prompt", PROMPT, "--num-images", "3",
                 "--model", str(assets["model"]), "--user", USERS[0], "--user", USERS[1], "--out", str(out),
                 "--steps", "2", "--seed", "7", "--device", "cpu", *extra])


def test_generate_then_score_images_end_to_end(assets, tmp_path, capsys):
    out = tmp_path / "samples"
    assert _generate(assets, out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]  # no temporary folder left behind
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [SHEET_NAME, "images/000.png", "images/001.png", "images/002.png", "run_config.yaml", "scores.json"]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["prompt"] == PROMPT and scores["images"] == ["images/000.png", "images/001.png", "images/002.png"]
    assert scores["seeds"] == [7, 8, 9] and scores["settings"]["steps"] == 2
    for user in USERS:
        s = scores["users"][user]
        assert len(s["rewards"]) == 3
        assert s["best"] == int(np.argmax(s["rewards"])) and s["ranks"][s["best"]] == 1
        assert sorted(s["ranks"]) == [1, 2, 3]
        assert s["best_image"] == scores["images"][s["best"]]
    with Image.open(out / SHEET_NAME) as sheet:  # one row per user, a green BEST frame in each
        arr = np.asarray(sheet.convert("RGB"))
    green = np.all(arr == (0, 170, 0), axis=-1)
    rows = np.array_split(np.arange(26, arr.shape[0]), 2)
    assert all(green[r].any() for r in rows)

    capsys.readouterr()
    images = [str(out / p) for p in scores["images"]]
    for user in USERS:  # score-images on the saved files reproduces generate's rewards exactly
        assert main(["score-images", "--model", str(assets["model"]), "--user", user, "--prompt", PROMPT, *images, "--json"]) == 0
        table = json.loads(capsys.readouterr().out)
        assert [row["rank"] for row in table] == [1, 2, 3]  # best first
        by_image = {row["image"]: row for row in table}
        assert [by_image[p]["reward"] for p in images] == scores["users"][user]["rewards"]
        assert [by_image[p]["rank"] for p in images] == scores["users"][user]["ranks"]
    assert main(["score-images", "--model", str(assets["model"]), "--user", USERS[0], "--prompt", PROMPT, *images]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["rank", "reward", "image"] and len(text) == 4
    assert text[1].split()[2] == images[scores["users"][USERS[0]]["best"]]


def test_library_best_of_n_pieces(assets, tmp_path):
    pipe = load_pipeline(str(assets["sd"]), device="cpu")
    one_call = sample_images(pipe, PROMPT, 3, steps=2, seed=5)
    one_by_one = sample_images(pipe, PROMPT, 3, steps=2, seed=5, batch_size=1)
    # image i is drawn from seed + i whatever the batch size; batched and one-by-one calls run different
    # kernels (bit-equality holds on some CPUs only), so compare 8-bit pixels with a tolerance
    for a, b in zip(one_call, one_by_one):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert diff.max() <= 3 and diff.mean() < 0.05
    assert not np.array_equal(np.asarray(one_call[0]), np.asarray(one_call[1]))
    paths = []
    for i, im in enumerate(one_call):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    model = PALModel.from_pretrained(assets["model"])
    rewards = image_rewards(model, PROMPT, paths, USERS)
    for user in USERS:  # the same as PALModel.reward, user by user
        assert rewards[user] == pytest.approx(model.reward(PROMPT, [str(p) for p in paths], user=user), abs=1e-5)
    sheet = contact_sheet(paths, rewards, PROMPT, thumb=64)
    assert sheet.width > 3 * 64 and sheet.height > 2 * 64


def test_rank_and_table():
    assert rank([0.1, 0.5, 0.5, -1.0]) == [3, 1, 2, 4]  # ties keep input order
    table = ranked_table(["a", "b", "c"], [0.0, 2.0, 1.0])
    assert [(r["image"], r["rank"]) for r in table] == [("b", 1), ("c", 2), ("a", 3)]


@pytest.mark.parametrize("change, message", [
    ({"--user": "nobody"}, "unknown user"),
    ({"--pipeline": "/no/such/pipeline"}, "not a diffusers pipeline directory"),
    ({"--num-images": "0"}, "--num-images must be >= 1"),
    ({"--steps": "0"}, "--steps must be >= 1"),
])
def test_generate_bad_input_is_one_line_and_leaves_nothing(assets, tmp_path, capsys, change, message):
    argv = ["generate", "--pipeline", str(assets["sd"]), "--prompt", PROMPT, "--num-images", "2", "--model",
            str(assets["model"]), "--user", USERS[0], "--out", str(tmp_path / "out"), "--steps", "1", "--device", "cpu"]
    for flag, value in change.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pal-mm: error:") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_existing_output(assets, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert _generate(assets, tmp_path / "out") == 2
    assert "exists" in capsys.readouterr().err


def test_score_images_bad_input(assets, tmp_path, capsys):
    base = ["score-images", "--model", str(assets["model"]), "--prompt", PROMPT]
    assert main([*base, "--user", USERS[0], str(tmp_path / "missing.png")]) == 2
    assert "image file not found" in capsys.readouterr().err
    assert main([*base, "--user", USERS[0]]) == 2
    assert "at least one IMAGE" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "missing.png")]) == 2
    assert "--user or --weights" in capsys.readouterr().err
    with pytest.raises(PalMMError, match="image-text encoder"):
        from pal_mm.generation import check_image_model

        class _TextOnly:
            encoder = type("E", (), {"name": "minilm", "item_modality": "text", "prompt_modality": "text"})()

        check_image_model(_TextOnly())


def test_exported_models_and_pil_images_are_accepted(assets, tmp_path, capsys):
    from pal_mm.export import PersonalRewardModel
    from pal_mm.rlhf import as_reward_function

    rm_dir = tmp_path / "rm_warm"
    assert main(["export", "--model", str(assets["model"]), "--user", USERS[0], "--out", str(rm_dir)]) == 0
    assert _generate(assets, tmp_path / "pal") == 0
    assert main(["generate", "--pipeline", str(assets["sd"]), "--prompt", PROMPT, "--num-images", "3", "--model", str(rm_dir),
                 "--out", str(tmp_path / "rm"), "--steps", "2", "--seed", "7", "--device", "cpu", "--quiet"]) == 0
    pal_scores = json.loads((tmp_path / "pal" / "scores.json").read_text())["users"][USERS[0]]["rewards"]
    rm_scores = json.loads((tmp_path / "rm" / "scores.json").read_text())["users"]
    assert list(rm_scores) == [USERS[0]]  # scored under the user it was exported for
    assert rm_scores[USERS[0]]["rewards"] == pytest.approx(pal_scores, abs=1e-5)
    images = [str(tmp_path / "pal" / "images" / f"00{i}.png") for i in range(3)]
    capsys.readouterr()
    assert main(["score-images", "--model", str(rm_dir), "--prompt", PROMPT, *images, "--json"]) == 0
    by_image = {row["image"]: row["reward"] for row in json.loads(capsys.readouterr().out)}
    assert [by_image[p] for p in images] == pytest.approx(pal_scores, abs=1e-5)
    assert main(["score-images", "--model", str(rm_dir), "--user", USERS[1], "--prompt", PROMPT, *images]) == 2
    assert "exported for user u_warm; drop --user/--weights" in capsys.readouterr().err

    # PIL images wherever image paths are accepted: the same numbers as the saved PNG files
    pil = [Image.open(p) for p in images]
    model, rm = PALModel.from_pretrained(assets["model"]), PersonalRewardModel.from_pretrained(rm_dir)
    assert model.reward(PROMPT, pil, user=USERS[0]) == pytest.approx(pal_scores, abs=1e-5)
    assert rm.reward(PROMPT, pil) == pytest.approx(pal_scores, abs=1e-5)
    assert rm.reward(PROMPT, pil[0]) == pytest.approx(pal_scores[:1], abs=1e-5)  # one image
    assert image_rewards(model, PROMPT, pil, [USERS[0]])[USERS[0]] == pytest.approx(pal_scores, abs=1e-5)
    assert as_reward_function(rm)(prompts=[PROMPT] * 3, completions=pil) == pytest.approx(pal_scores, abs=1e-5)


def test_sampling_shows_a_progress_bar_unless_quiet(assets, tmp_path, capsys):
    from pal_mm.generation import best_of_n

    model = PALModel.from_pretrained(assets["model"])
    capsys.readouterr()
    best_of_n(str(assets["sd"]), PROMPT, 1, model, [USERS[0]], tmp_path / "a", steps=2, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "0/2 " in err and "Loading pipeline components" in err  # the denoising and loading bars
    best_of_n(str(assets["sd"]), PROMPT, 1, model, [USERS[0]], tmp_path / "b", steps=2, device="cpu", progress=False)
    assert capsys.readouterr().err == ""
