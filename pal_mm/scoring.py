"""Rewards of known users' pairs, in eval mode: what validation (every epoch) and evaluation use."""

from __future__ import annotations

import torch

from .embedding import EncodedPairs
from .model import PALModel


# ------------------------------------------------------------------------------------------
@torch.no_grad()
def pair_rewards(model: PALModel, pairs: EncodedPairs, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,), (n,) rewards of the chosen and of the rejected items, for known users, in eval mode."""
    head = model.head
    was_training = head.training
    head.eval()
    idx = model.user_index(pairs.user_ids)
    device = next(head.parameters()).device
    chosen, rejected = [], []
    for s in range(0, len(pairs), batch_size):
        sl = slice(s, s + batch_size)
        r_c, r_r = head.pair_rewards(pairs.prompt[sl].to(device), pairs.chosen[sl].to(device),
                                     pairs.rejected[sl].to(device), head.user_weights(idx[sl].to(device)))
        chosen.append(r_c.float().cpu())
        rejected.append(r_r.float().cpu())
    head.train(was_training)
    empty = torch.zeros(0)
    return (torch.cat(chosen) if chosen else empty), (torch.cat(rejected) if rejected else empty)


def pair_margins(model: PALModel, pairs: EncodedPairs, batch_size: int = 4096) -> torch.Tensor:
    """(n,) margins reward(chosen) - reward(rejected); exactly 0 means a tie."""
    chosen, rejected = pair_rewards(model, pairs, batch_size)
    return chosen - rejected


def pair_losses(model: PALModel, pairs: EncodedPairs) -> torch.Tensor:
    """(n,) the head's training loss of each pair (known users, eval mode), float64."""
    with torch.no_grad():
        return model.head.loss(pair_margins(model, pairs), reduction="none").double()


def validation_metrics(model: PALModel, val: EncodedPairs) -> dict:
    """Loss, accuracy, reward margin and reward statistics on validation pairs."""
    r_c, r_r = pair_rewards(model, val)
    m = r_c - r_r
    rewards = torch.cat([r_c, r_r])
    return {"val_loss": float(model.head.loss(m)), "val_accuracy": float((m > 0).float().mean()),
            "val_margin": float(m.mean()), "val_reward_mean": float(rewards.mean()), "val_reward_std": float(rewards.std())}


@torch.no_grad()
def mixture_mass(model: PALModel) -> dict:
    """Mean weight of each prototype over the known users (how much each prototype is used)."""
    if model.head.num_users == 0 or not model.head.has_user_state or not model.head.simplex_users:
        return {}
    w = model.head.weights_from_logits(model.head.user_logits.float()).mean(0)
    return {f"mixture_mass_{k}": round(float(v), 6) for k, v in enumerate(w)}
