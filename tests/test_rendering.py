"""One rendering of conversations: the same conversation gives the same vector and the same reward on
every path - `pal-mm embed` (its cache serves `train` with no new encoding), training, `pal-mm eval`,
`PALModel.reward`, the exported model, `pal-mm score` and the TRL reward function - for an encoder
with a chat template (a tiny causal LM whose tokenizer has one) and for one without (role: content)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from encoders.cache import EmbeddingCache
from encoders.testing import build_tiny_causal_lm
from pal_mm import PALModel, PreferenceData, evaluate
from pal_mm.cli import main
from pal_mm.conversation import chat_tokenizer, render_prompt, render_response
from pal_mm.embedding import encode_values
from pal_mm.export import PersonalRewardModel
from pal_mm.rlhf import as_reward_function

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
QUESTIONS = ["what is the capital of france", "a photo of a cat", "hello world", "a cup of coffee"]
SHORT = ["paris", "a cat", "hello", "coffee"]
LONG = ["the capital of france is paris", "a photo of a cat on a sofa", "hello world to you",
        "a cup of coffee with milk"]


def prompt_of(q: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": q}]}]


def reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    d = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-chat-lm"))
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(d)
    return d


def conversational_rows() -> list[dict]:
    rows = []
    for q, s, lg in zip(QUESTIONS, SHORT, LONG):
        rows.append({"user_id": "terse", "prompt": prompt_of(q), "chosen": reply(s), "rejected": reply(lg)})
        rows.append({"user_id": "chatty", "prompt": prompt_of(q), "chosen": reply(lg), "rejected": reply(s)})
    return rows * 2


def run_cli(capsys, argv) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_the_same_conversation_gives_the_same_vector_and_reward_everywhere(lm_dir, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in conversational_rows()))
    enc = ["--encoder", "hf-text", "--encoder-arg", f"model_name_or_path={lm_dir}", "--quiet"]
    # embed fills the cache; train then encodes nothing new (before: embed skipped the template)
    out = run_cli(capsys, ["embed", "--data", str(data), *enc])
    assert "16 pairs; encoded 12, found 0 cached" in out  # 4 prompts + 8 distinct replies
    out = run_cli(capsys, ["train", "--data", str(data), *enc, "--k", "2", "--epochs", "3", "--seed", "0",
                           "--out", str(tmp_path / "m")])
    assert "embeddings (hf-text): encoded 0, found 12 cached" in out
    model = PALModel.from_pretrained(tmp_path / "m")
    tok = chat_tokenizer(model.encoder)
    assert tok is not None and tok.chat_template == TEMPLATE

    # the vector: the cache holds the rendered text; encode_values renders a raw conversation the same way
    conv, answer = prompt_of(QUESTIONS[0]), reply(LONG[0])
    text = render_prompt(conv, tok)
    assert text == "<|system|>be brief</s><|user|>what is the capital of france</s><|assistant|>"
    assert render_response(answer) == LONG[0]
    cache = EmbeddingCache()
    cached_p = cache.encode(model.encoder, "prompt", [text])
    cached_x = cache.encode(model.encoder, "item", [LONG[0]])
    assert (cache.hits, cache.misses) == (2, 0)
    assert torch.allclose(encode_values(model.encoder, [conv], "prompt"), cached_p, atol=1e-5)
    assert torch.allclose(encode_values(model.encoder, [answer], "item"), cached_x, atol=1e-5)

    # the reward: PALModel, the exported model, the TRL reward function (TRL's conversational shapes), the CLI
    with torch.no_grad():
        expected = float(model.reward_embeddings(cached_p, cached_x, user="chatty")[0])
    assert model.reward(conv, [answer], user="chatty")[0] == pytest.approx(expected, abs=1e-5)
    assert model.reward(conv, answer, user="chatty")[0] == pytest.approx(expected, abs=1e-5)  # one conversation
    assert model.reward(text, [LONG[0]], user="chatty")[0] == pytest.approx(expected, abs=1e-5)
    run_cli(capsys, ["export", "--model", str(tmp_path / "m"), "--user", "chatty", "--out", str(tmp_path / "rm")])
    rm = PersonalRewardModel.from_pretrained(tmp_path / "rm")
    assert rm.reward(conv, [answer])[0] == pytest.approx(expected, abs=1e-5)
    fn = as_reward_function(rm)
    assert fn(prompts=[conv, conv], completions=[answer, reply(SHORT[0])])[0] == pytest.approx(expected, abs=1e-5)
    per_user = as_reward_function(model)
    assert per_user(prompts=[conv], completions=[answer], user_id=["chatty"])[0] == pytest.approx(expected, abs=1e-5)
    out = run_cli(capsys, ["score", "--model", str(tmp_path / "rm"), "--prompt", json.dumps(conv),
                           "--response", json.dumps(answer), "--response", LONG[0], "--json", "--quiet"])
    assert json.loads(out)["rewards"] == pytest.approx([expected, expected], abs=1e-5)

    # evaluation: the CLI (rendered at load) and the Python API (rendered when encoded) agree with reward()
    metrics = json.loads(run_cli(capsys, ["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--json", "--quiet"]))
    raw = PreferenceData.load(data)
    assert raw.prompts[0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": QUESTIONS[0]}]
    api = evaluate(model, raw)
    correct = 0
    for u, p, c, r in zip(raw.user_ids, raw.prompts, raw.chosen, raw.rejected):
        rc, rr = model.reward(p, [c, r], user=u)
        correct += rc > rr
    assert metrics["n_correct"] == api["n_correct"] == correct and metrics["n_pairs"] == 16


def test_without_a_chat_template_conversations_are_role_content_lines(tmp_path, capsys):
    from pal_mm.embedding import render_data

    rows = conversational_rows()
    data = PreferenceData.from_rows(rows)

    class NoTemplate:  # what minilm and the image encoders look like to the renderer
        tokenizer = type("Tok", (), {"chat_template": None})()

    assert chat_tokenizer(NoTemplate()) is None
    rendered = render_data(NoTemplate(), data)
    assert rendered.prompts[0] == "system: be brief\nuser: what is the capital of france"
    assert rendered.chosen[:2] == [SHORT[0], LONG[0]]
    assert data.prompts[0] != rendered.prompts[0]  # the input is not changed
    same = PreferenceData.from_rows(rows, chat_tokenizer=None)
    assert same.prompts == data.prompts


def test_the_template_is_applied_with_the_generation_prompt_and_errors_name_the_row(lm_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_dir)
    strict = AutoTokenizer.from_pretrained(lm_dir)
    strict.chat_template = "{{ raise_exception('no system role') }}"
    rows = conversational_rows()
    assert PreferenceData.from_rows(rows, chat_tokenizer=tok).prompts[0].endswith("<|assistant|>")
    from pal_mm.errors import DataError

    with pytest.raises(DataError, match="row 1: column 'prompt': the tokenizer's chat template failed"):
        PreferenceData.from_rows(rows, chat_tokenizer=strict)
