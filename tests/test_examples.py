"""The RLHF examples run: GRPO with a personal reward (TRL's GRPOTrainer; skipped without TRL) and
reward-guided diffusion with the differentiable image score, each offline on tiny models."""

from __future__ import annotations

import warnings

import pytest

from pal_mm.rlhf import RewardFunction

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_grpo_example_scores_trls_conversational_rows_for_their_users(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    from examples import grpo_personal_reward as example

    calls = []
    original = RewardFunction.__call__

    def spy(self, prompts=None, completions=None, **kwargs):
        rewards = original(self, prompts, completions, **kwargs)
        calls.append((self.model, prompts, completions, kwargs.get("user_id"), rewards))
        return rewards

    monkeypatch.setattr(RewardFunction, "__call__", spy)
    history = example.main(["--tiny", "--out", str(tmp_path / "grpo"), "--steps", "2", "--num-generations", "2"])
    assert len(calls) == 2 and (tmp_path / "grpo" / "policy" / "config.json").is_file()
    logged = [h["rewards/pal_per_user/mean"] for h in history if "rewards/pal_per_user/mean" in h]
    assert len(logged) == 2
    for (model, prompts, completions, users, rewards), mean in zip(calls, logged):
        # TRL's conversational format reached the reward function, with the dataset's user_id column
        assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)
        assert all(isinstance(c, list) and c[-1]["role"] == "assistant" for c in completions)
        assert users is not None and set(users) <= {"terse", "chatty"}
        for p, c, u, r in zip(prompts, completions, users, rewards):  # each row for its own user
            assert model.reward(p, c, user=u)[0] == pytest.approx(r, abs=1e-5)
        assert sum(rewards) / len(rewards) == pytest.approx(mean, abs=1e-3)


def test_reward_guided_diffusion_example_raises_the_users_reward(tmp_path):
    from examples import reward_guided_diffusion as example

    result = example.main(["--tiny", "--out", str(tmp_path / "rgd"), "--steps", "4"])
    assert len(result["train_rewards"]) == 4
    assert result["after"] > result["before"]  # fixed evaluation noise: the warm user's reward went up
    assert (tmp_path / "rgd" / "pipeline" / "model_index.json").is_file()


def test_the_ddpo_helper_is_deprecated():
    from pal_mm.rlhf import as_ddpo_reward_function

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Exception):
            as_ddpo_reward_function("/no/such/model")
    assert any(issubclass(w.category, DeprecationWarning) and "TRL has removed DDPO" in str(w.message) for w in caught)
