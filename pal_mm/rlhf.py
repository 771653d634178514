"""PAL reward models in RLHF loops.

* :func:`as_reward_function` - a callable with TRL's ``reward_funcs`` signature
  (``GRPOTrainer`` / ``RLOOTrainer``): ``fn(prompts, completions, **kwargs) -> list[float]``.
  Prompts and completions may be strings or conversations (lists of ``{role, content}``); they are
  rendered exactly as training rendered the data (:mod:`pal_mm.conversation`: the encoder's chat
  template for a prompt, the reply's text for a completion), so the reward of a conversation is the
  one the model learned. With a multi-user :class:`~pal_mm.PALModel` and no fixed user, each row is
  scored for the user in the dataset's ``user_id`` column (TRL passes the dataset's extra columns as
  keyword arguments). Completions may also be PIL images (an image-text model).
* :func:`score_pixels` - a differentiable reward of images given as a (B, 3, H, W) tensor in
  [0, 1], for reward-guided diffusion fine-tuning (ReFL / AlignProp / DRaFT style). The image
  encoder's own ``encode_pixels`` runs its preprocessing in torch (resize, centre crop,
  normalisation), so gradients reach the pixels. ``examples/reward_guided_diffusion.py`` runs it.
* :func:`as_ddpo_reward_function` - legacy (deprecated): TRL has removed its DDPO trainer.

No dependency on TRL: the signatures are TRL's, the code is not. ``examples/grpo_personal_reward.py``
runs GRPO with a personal reward.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import torch

from .conversation import flatten_conversation, is_conversation, is_message, render_response
from .errors import PalMMError
from .export import PersonalRewardModel, load_reward_model, score_pixels
from .mixture import check_simplex
from .model import PALModel


# ------------------------------------------------------------------------------------------
# Text (and generic) reward functions
# ------------------------------------------------------------------------------------------
def _as_model(model_or_path):
    if isinstance(model_or_path, (PersonalRewardModel, PALModel)):
        return model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_reward_model(model_or_path)
    raise PalMMError(f"expected a PersonalRewardModel, a PALModel or a model path, got {type(model_or_path).__name__}")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))[:64]


class RewardFunction:
    """TRL-compatible reward function over a PAL model (see :func:`as_reward_function`).

    Not an ``nn.Module`` on purpose: TRL treats modules as Hugging Face sequence classifiers.
    """

    def __init__(self, model, user: str | None = None, weights: Sequence[float] | None = None, batch_size: int = 32,
                 user_column: str = "user_id", tokenizer: Any = "auto", name: str | None = None):
        if int(batch_size) < 1:
            raise PalMMError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.user_column = user_column
        self._tokenizer = tokenizer
        self.user, self.weights = user, None
        if isinstance(model, PersonalRewardModel):
            if weights is not None or (user is not None and user != model.user):
                raise PalMMError(f"this reward model was exported for {model.describe()}; it takes no other user or weights")
            default = f"pal_{_slug(model.user or model.describe())}"
        else:
            if user is not None and weights is not None:
                raise PalMMError("give user or weights, not both")
            if user is not None:
                model.user_index([user])  # unknown user -> PalMMError now, not mid-training
            if weights is not None:
                self.weights = check_simplex(weights, model.config.k, "weights")
            default = f"pal_{_slug(user)}" if user is not None else "pal_weights" if weights is not None else "pal_per_user"
        self.__name__ = name or default
        self.__qualname__ = self.__name__

    def __repr__(self) -> str:
        return f"<pal-mm reward function {self.__name__}>"

    # ----- inputs -----------------------------------------------------------------------------
    @property
    def encoder(self):
        return self.model.encoder

    def tokenizer(self):
        """The tokenizer whose chat template renders conversational prompts: ``"auto"`` = the
        encoder's own (:func:`pal_mm.conversation.chat_tokenizer`, what training used)."""
        if self._tokenizer == "auto":
            from .conversation import chat_tokenizer

            return chat_tokenizer(self.encoder)
        return self._tokenizer

    def prompt_value(self, prompt: Any) -> Any:
        """A prompt as the encoder sees it (only an explicit ``tokenizer=`` renders it here; by
        default :func:`pal_mm.embedding.encode_values` renders it, as for training data)."""
        if self._tokenizer != "auto" and (is_conversation(prompt) or is_message(prompt)):
            return flatten_conversation([prompt] if is_message(prompt) else prompt, self._tokenizer, add_generation_prompt=True)
        return prompt

    @staticmethod
    def completion_value(completion: Any) -> Any:
        """A completion as the encoder sees it: a conversation's reply text; anything else as is."""
        return render_response(completion)

    # ----- scoring ----------------------------------------------------------------------------
    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None, **kwargs) -> list[float]:
        if completions is None:
            raise PalMMError("the reward function needs completions=[...]")
        completions = list(completions)
        if prompts is None:
            raise PalMMError("the reward function needs prompts=[...] (one per completion)")
        if isinstance(prompts, str) or is_conversation(prompts) or is_message(prompts):
            prompts = [prompts] * len(completions)
        prompts = list(prompts)
        if len(prompts) != len(completions):
            raise PalMMError(f"got {len(prompts)} prompts for {len(completions)} completions")
        ps = [self.prompt_value(p) for p in prompts]
        cs = [self.completion_value(c) for c in completions]
        users = None
        if isinstance(self.model, PALModel) and self.user is None and self.weights is None:
            users = kwargs.get(self.user_column)
            if users is None:
                if len(self.model.users) == 1:
                    users = self.model.users * len(cs)
                else:
                    raise PalMMError(f"this PAL model has {len(self.model.users)} users: fix one (user=... / weights=...), "
                                     f"export one with `pal-mm export`, or give a '{self.user_column}' column")
            users = [str(u) for u in users]
            if len(users) != len(cs):
                raise PalMMError(f"got {len(users)} {self.user_column} values for {len(cs)} completions")
        out: list[float] = []
        for i in range(0, len(cs), self.batch_size):
            j = i + self.batch_size
            out += self._score(ps[i:j], cs[i:j], None if users is None else users[i:j])
        return [float(r) for r in out]

    @torch.no_grad()
    def _score(self, prompts: list, completions: list, users: list[str] | None) -> list[float]:
        m = self.model
        if isinstance(m, PersonalRewardModel):
            return m.reward(prompts, completions)
        if users is None:
            return m.reward(prompts, completions, user=self.user, weights=self.weights)
        from .embedding import encode_values

        m.eval()
        p = encode_values(m.encoder, prompts, "prompt")
        x = encode_values(m.encoder, completions, "item")
        return m.reward_embeddings(p, x, users=users).tolist()


def as_reward_function(model_or_path, user: str | None = None, weights: Sequence[float] | None = None, batch_size: int = 32,
                       user_column: str = "user_id", tokenizer: Any = "auto", name: str | None = None) -> RewardFunction:
    """A TRL ``reward_funcs`` entry: ``fn(prompts, completions, **kwargs) -> list[float]``.

    ``model_or_path``: a :class:`~pal_mm.export.PersonalRewardModel`, a :class:`~pal_mm.PALModel`
    or the directory / Hub id of either. For a PAL model, ``user`` or ``weights`` fixes the
    mixture; without them every row is scored for ``kwargs[user_column]``. Scoring runs in
    batches of ``batch_size``. ``tokenizer``: keep ``"auto"`` (conversational prompts rendered as
    in training: the encoder's chat template, else ``role: content`` lines); another tokenizer, or
    ``None`` for plain lines, renders them differently from training. The function's ``__name__`` (``pal_<user>``) names the reward in
    TRL's logs; pass ``name=`` to change it.

    Example::

        from trl import GRPOTrainer
        trainer = GRPOTrainer(model=policy, reward_funcs=[as_reward_function("out/alice")], ...)
    """
    return RewardFunction(_as_model(model_or_path), user=user, weights=weights, batch_size=batch_size,
                          user_column=user_column, tokenizer=tokenizer, name=name)


# ------------------------------------------------------------------------------------------
# Differentiable image scores
# ------------------------------------------------------------------------------------------
def as_ddpo_reward_function(model_or_path, user: str | None = None, weights: Sequence[float] | None = None):
    """Legacy (deprecated): TRL DDPO's reward callable ``fn(images, prompts, prompt_metadata) ->
    (rewards, {})``. TRL has removed its DDPO trainer; use :func:`score_pixels` in your own loop
    (``examples/reward_guided_diffusion.py``). ``images``: a (B, 3, H, W) tensor in [0, 1] or PIL
    images; rewards are a (B,) tensor (no gradient)."""
    warnings.warn("as_ddpo_reward_function is deprecated: TRL has removed DDPO; use pal_mm.rlhf.score_pixels "
                  "(see examples/reward_guided_diffusion.py)", DeprecationWarning, stacklevel=2)
    model = _as_model(model_or_path)

    def pal_ddpo_reward(images, prompts, prompt_metadata=None):
        if not isinstance(images, torch.Tensor):
            images = pil_to_pixels(images)
        with torch.no_grad():
            rewards = score_pixels(model, list(prompts), images.float(), user=user, weights=weights)
        return rewards.detach().cpu(), {}

    return pal_ddpo_reward


def pil_to_pixels(images: Sequence[Any]) -> torch.Tensor:
    """PIL images (one size) -> a (B, 3, H, W) float tensor in [0, 1], the input of :func:`score_pixels`."""
    import numpy as np

    return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                        for im in images])


__all__ = ["RewardFunction", "as_ddpo_reward_function", "as_reward_function", "pil_to_pixels", "score_pixels"]
