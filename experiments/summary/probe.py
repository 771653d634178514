"""A diagnostic of the summary experiment: how well frozen summary embeddings encode length (the
only signal in the synthetic labels). No preference labels and no model selection are involved."""

from __future__ import annotations

import math

import torch

from pal_mm.data import PreferenceData
from pal_mm.embedding import EncodedPairs


def length_probe(enc: dict[str, EncodedPairs], data: dict[str, PreferenceData]) -> dict:
    """Diagnostic (no preference labels, no model selection): how well do the frozen item
    embeddings encode summary length, the signal both groups' labels are built from? A ridge
    regression from embedding to log character length, fitted on the train-pool summaries
    (seen_train), scored on the test-pool summaries (seen_test + unseen) as R^2 and as the
    accuracy of ordering the two summaries of each test pair by predicted length."""
    def items(split):
        texts = list(data[split].chosen) + list(data[split].rejected)
        emb = torch.cat([enc[split].chosen, enc[split].rejected])
        return texts, emb

    tr_t, tr_x = items("seen_train")
    seen = {}
    keep = [seen.setdefault(t, i) == i for i, t in enumerate(tr_t)]
    tr_x = tr_x[torch.as_tensor(keep)]
    tr_y = torch.tensor([math.log(len(t)) for t, k in zip(tr_t, keep) if k])
    mu, sd = tr_x.mean(0), tr_x.std(0).clamp_min(1e-6)
    X = torch.cat([(tr_x - mu) / sd, torch.ones(len(tr_x), 1)], 1).double()
    w = torch.linalg.solve(X.T @ X + 1.0 * torch.eye(X.shape[1], dtype=X.dtype), X.T @ tr_y.double())

    def predict(x):
        return (torch.cat([(x - mu) / sd, torch.ones(len(x), 1)], 1).double() @ w).float()

    out = {}
    for split in ("seen_test", "unseen"):
        pd, ep = data[split], enc[split]
        pc, pr = predict(ep.chosen), predict(ep.rejected)
        lc = torch.tensor([len(t) for t in pd.chosen]); lr = torch.tensor([len(t) for t in pd.rejected])
        y = torch.cat([lc, lr]).float().log()
        p = torch.cat([pc, pr])
        out[split] = {"r2": float(1 - ((p - y) ** 2).mean() / y.var()),
                      "pair_order_accuracy": float(((pc > pr) == (lc > lr)).float().mean())}
    return out
