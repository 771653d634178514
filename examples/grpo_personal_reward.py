"""GRPO with a personal reward: a policy learns to answer the way one user likes (or, with a
multi-user PAL model, the way each prompt's user likes), with TRL's ``GRPOTrainer`` and pal-mm's
TRL reward function (:func:`pal_mm.rlhf.as_reward_function`).

    pip install "pal-mm[text]" "trl>=1.0"
    pal-mm export --model runs/m --user alice --out rm_alice          # a one-user reward model
    python -m examples.grpo_personal_reward --reward rm_alice --prompts prompts.jsonl \\
        --policy HuggingFaceTB/SmolLM2-135M-Instruct --steps 200 --out runs/grpo_alice
    python -m examples.grpo_personal_reward --reward runs/m --prompts prompts_with_users.jsonl ...   # per-row users
    python -m examples.grpo_personal_reward --tiny --out /tmp/grpo_tiny      # offline smoke run, a few CPU steps

``prompts.jsonl``: one ``{"prompt": ...}`` per line, the prompt a string or a conversation
(``[{"role": "user", "content": ...}]``), plus ``"user_id"`` when a multi-user PAL model scores each
row for its own user (TRL passes the dataset's extra columns to the reward function). The reward
function renders prompts and completions exactly as the reward model's training data were rendered
(the encoder's chat template for a conversational prompt, the reply's text for a completion).

``--tiny`` builds everything offline in a work folder: a tiny random Llama policy, and a PAL-B
reward model (K=2, users ``terse`` and ``chatty``) trained on the spot on a tiny random encoder.
Its rewards carry no meaning: it checks the wiring, not that the policy gets better.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TINY_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TINY_QUESTIONS = ["what is the capital of france", "a photo of a cat", "hello world", "a cup of coffee"]
TINY_ANSWERS = {"short": ["paris", "a cat", "hello", "coffee"],
                "long": ["the capital of france is paris", "a photo of a cat on a sofa", "hello world to you",
                         "a cup of coffee with milk"]}


def load_prompts(path: str | Path):
    """A ``datasets.Dataset`` with a ``prompt`` column (and ``user_id`` when the file has one)."""
    from datasets import Dataset

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or any("prompt" not in r for r in rows):
        raise SystemExit(f"{path}: every line needs a 'prompt'")
    columns = {"prompt": [r["prompt"] for r in rows]}
    if all("user_id" in r for r in rows):
        columns["user_id"] = [str(r["user_id"]) for r in rows]
    return Dataset.from_dict(columns)


def grpo_trainer(policy, reward_model, dataset, out_dir: str | Path, *, user: str | None = None, steps: int = 100,
                 num_generations: int = 4, max_completion_length: int = 64, learning_rate: float = 1e-5,
                 seed: int = 0, cpu: bool = False, processing_class=None):
    """A ``GRPOTrainer`` whose only reward is the PAL model's (``user``: fix one user of a multi-user
    model; without it each row is scored for its ``user_id``). ``policy``: a Hub id, a folder or a model."""
    from trl import GRPOConfig, GRPOTrainer

    from pal_mm.rlhf import as_reward_function

    reward = as_reward_function(reward_model, user=user)
    config = GRPOConfig(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=num_generations,
                        num_generations=num_generations, max_completion_length=max_completion_length,
                        learning_rate=learning_rate, logging_steps=1, save_strategy="no", report_to="none",
                        seed=seed, use_cpu=cpu, bf16=False, fp16=False)
    return GRPOTrainer(model=str(policy) if isinstance(policy, Path) else policy, reward_funcs=[reward], args=config, train_dataset=dataset,
                       processing_class=processing_class)


def tiny_setup(work: str | Path, seed: int = 0):
    """(policy folder, reward model, dataset) built offline in ``work`` (see the module doc)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from encoders import create_encoder
    from encoders.testing import build_tiny_causal_lm
    from pal_mm import PALConfig, PreferenceData, TrainConfig, fit

    work = Path(work)
    policy = build_tiny_causal_lm(work / "policy", seed=seed)
    tok = AutoTokenizer.from_pretrained(policy)
    tok.chat_template = TINY_TEMPLATE
    tok.pad_token = tok.eos_token
    tok.save_pretrained(policy)
    encoder_dir = build_tiny_causal_lm(work / "reward-encoder", seed=seed + 1)
    rows = []
    for q, short, long in zip(TINY_QUESTIONS, TINY_ANSWERS["short"], TINY_ANSWERS["long"]):
        prompt = [{"role": "user", "content": q}]
        rows.append({"user_id": "terse", "prompt": prompt, "chosen": short, "rejected": long})
        rows.append({"user_id": "chatty", "prompt": prompt, "chosen": long, "rejected": short})
    encoder = create_encoder("hf-text", model_name_or_path=str(encoder_dir))
    reward_model = fit(PreferenceData.from_rows(rows * 4), None, encoder, PALConfig(model_type="pal-b", k=2, dim=16),
                       TrainConfig(epochs=5, patience=0, seed=seed, progress=False, cpu=True))
    users = [random.Random(seed).choice(["terse", "chatty"]) for _ in range(8)]
    prompts = [[{"role": "user", "content": TINY_QUESTIONS[i % len(TINY_QUESTIONS)]}] for i in range(8)]
    return policy, reward_model, Dataset.from_dict({"prompt": prompts, "user_id": users})


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward", help="PAL model or exported reward model (folder or Hub id)")
    p.add_argument("--user", default=None, help="fix one user of a multi-user PAL model (default: each row's user_id)")
    p.add_argument("--prompts", help="JSON lines with 'prompt' (and optionally 'user_id')")
    p.add_argument("--policy", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="policy model: Hub id or folder")
    p.add_argument("--out", required=True, help="output folder (the trained policy)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: 100; 3 with --tiny)")
    p.add_argument("--num-generations", type=int, default=4, help="completions per prompt (the GRPO group)")
    p.add_argument("--max-completion-length", type=int, default=None, help="tokens per completion (default: 64; 8 with --tiny)")
    p.add_argument("--learning-rate", type=float, default=1e-5, help="policy learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--tiny", action="store_true", help="offline smoke run: tiny random policy and reward model")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.tiny:
        policy, reward, dataset = tiny_setup(out / "tiny", a.seed)
        steps, length, cpu = a.steps or 3, a.max_completion_length or 8, True
    else:
        if not (a.reward and a.prompts):
            p.error("--reward and --prompts are required (or --tiny)")
        policy, reward, dataset = a.policy, a.reward, load_prompts(a.prompts)
        steps, length, cpu = a.steps or 100, a.max_completion_length or 64, a.cpu
    trainer = grpo_trainer(policy, reward, dataset, out, user=a.user, steps=steps, num_generations=a.num_generations,
                           max_completion_length=length, learning_rate=a.learning_rate, seed=a.seed, cpu=cpu)
    trainer.train()
    trainer.save_model(str(out / "policy"))
    rewards = [round(h[k], 4) for h in trainer.state.log_history for k in h if k.startswith("rewards/") and k.endswith("/mean")]
    print(f"GRPO: {trainer.state.global_step} steps; mean personal reward per step {rewards}; policy saved to {out / 'policy'}")
    return trainer.state.log_history


if __name__ == "__main__":
    main()
