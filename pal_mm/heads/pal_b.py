"""PAL-B: prototype reward functions.

K maps ``g_k`` of the prompt are the prototypes; user ``u``'s ideal point is
``u(p) = sum_k w_uk g_k(p)`` and an item scores ``r(x) = min(e^s, s_max) * cos(u(p), f(x))``.
Trained with the Bradley-Terry loss with label noise (``default_label_noise``: a pair's label is
taken to be flipped with probability 0.2, see :meth:`PreferenceHead.loss`); the logit scale ``s`` is learned.

New users (:meth:`PALBHead.user_pair_features`): ``cos(u, f(x))`` needs only the K inner products
``<g_k(p), f(x)>``, the K x K Gram matrix ``<g_k(p), g_l(p)>`` and ``|f(x)|``, so each step costs
O(K^2) per pair instead of O(K d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from ..config import PALConfig
from .base import PreferenceHead
from .projectors import build_projector
from .registry import register_head


@register_head("pal-b")
class PALBHead(PreferenceHead):
    """Groups: ``projector_f``, ``projectors_gk``, ``W`` (user logits), ``logit_scale``."""

    default_loss = "bt"
    #: Bradley-Terry with labels flipped at rate 0.2 (``PALConfig.label_noise``): the defaults study's label-noise
    #: side study (experiments/defaults/label_noise.yaml, three training seeds) chose 0.2 over the plain loss on
    #: validation (mean regret 0.31 against 0.51 points over 17 data sets)
    default_label_noise = 0.2
    splittable = True
    closed_form_margin_gradients = True
    description = "PAL-B: K prompt-conditioned prototype reward functions, scaled cosine, Bradley-Terry"

    def build(self, c: PALConfig, gen: torch.Generator) -> None:
        d = c.width
        self.f = build_projector(c.projector, c.item_dim, d)
        spec = c.prototype_projector or c.projector
        self.g = nn.ModuleList(build_projector(spec, c.prompt_dim, d) for _ in range(c.k))
        self.logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init)))

    # ----- the model --------------------------------------------------------------------------
    def prototypes(self, prompt_emb: torch.Tensor) -> torch.Tensor:
        """(b, dp) raw prompt embeddings -> (b, K, d) prototype points g_k(prompt)."""
        p = self.prompt_norm(prompt_emb)
        return torch.stack([g(p) for g in self.g], dim=1)

    def ideal_point(self, prompt_emb: torch.Tensor, weights: torch.Tensor, protos: torch.Tensor | None = None) -> torch.Tensor:
        """(b, dp) raw prompt embeddings, (b, K) weights -> (b, d) ideal points (or from ``protos`` (b, K, d))."""
        if protos is None:
            protos = self.prototypes(prompt_emb)
        return einsum(weights, protos, "b k, b k d -> b d")

    def item_embedding(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(b, di) raw item embeddings -> (b, d) item points f(x) (the prompt is not used)."""
        return self.f(self.item_norm(item_emb))

    def scale(self) -> torch.Tensor:
        """The inverse temperature min(e^s, s_max)."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def score(self, ideal: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(b, d) ideal points, (b, d) item points -> (b,) rewards."""
        return self.scale() * F.cosine_similarity(ideal, item, dim=-1)

    def reward(self, prompt_emb, item_emb, weights) -> torch.Tensor:
        return self.score(self.ideal_point(prompt_emb, weights), self.item_embedding(prompt_emb, item_emb))

    def pair_rewards(self, prompt_emb, chosen_emb, rejected_emb, weights):
        ideal = self.ideal_point(prompt_emb, weights)  # once for both items
        item_c, item_r = self.item_embedding(None, torch.cat([chosen_emb, rejected_emb])).split(chosen_emb.shape[0])
        return self.score(ideal, item_c), self.score(ideal, item_r)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"projector_f": list(self.f.parameters()), "W": [self.user_logits],
                "projectors_gk": list(self.g.parameters()), "logit_scale": [self.logit_scale]}

    def load_split(self, source: "PALBHead") -> None:
        k_src = source.config.k

        def prototype(key, value, src):  # g.<k>.<rest> <- g.<k mod K'>.<rest>
            if not key.startswith("g."):
                return None
            _, k, rest = key.split(".", 2)
            return src[f"g.{int(k) % k_src}.{rest}"]

        self._copy_split_state(source, prototype)

    def reward_range(self) -> tuple[float, float]:
        scale = float(self.scale().detach())  # r = min(e^s, s_max) * cos
        return (-scale, scale)

    def extra_metrics(self) -> dict:
        return {"logit_scale": float(self.scale().detach())}

    # ----- new users ---------------------------------------------------------------------------
    def user_pair_features(self, prompt_emb, chosen_emb, rejected_emb) -> dict[str, torch.Tensor]:
        n = chosen_emb.shape[0]
        items = self.item_embedding(None, torch.cat([chosen_emb, rejected_emb]))  # (2n, d): f once for both items
        item_c, item_r = items[:n], items[n:]
        protos = self.prototypes(prompt_emb)  # (n, K, d)
        return {"dot_c": einsum(protos, item_c, "n k d, n d -> n k"), "dot_r": einsum(protos, item_r, "n k d, n d -> n k"),
                "gram": einsum(protos, protos, "n k d, n l d -> n k l"), "norm_c": item_c.norm(dim=-1),
                "norm_r": item_r.norm(dim=-1)}

    def margins_from_features(self, features, logits: torch.Tensor, user_rows: torch.Tensor) -> torch.Tensor:
        w = self.weights_from_logits(logits)[user_rows]  # (n, K)
        norm_u = ((w[:, None, :] @ features["gram"]) @ w[:, :, None]).reshape(-1).clamp_min(0).sqrt()  # sqrt(w^T G w)
        cos_c = (w * features["dot_c"]).sum(-1) / (norm_u * features["norm_c"]).clamp_min(1e-8)
        cos_r = (w * features["dot_r"]).sum(-1) / (norm_u * features["norm_r"]).clamp_min(1e-8)
        return self.scale().detach() * (cos_c - cos_r)

    def margin_gradients_from_features(self, features, logits: torch.Tensor, user_rows: torch.Tensor):
        """Closed form (no autograd), for fast online updates: with w = softmax(W), q = G w,
        u = sqrt(w^T q), A = w . dot: dm/dw = s [(dot_c / |f_c| - dot_r / |f_r|) / u - (A_c / |f_c| - A_r / |f_r|) q / u^3]
        and dm/dW = w * (dm/dw - w . dm/dw). (Ignores the 1e-8 clamps, i.e. zero-length vectors.)"""
        if type(self).weights_from_logits is not PreferenceHead.weights_from_logits:
            return super().margin_gradients_from_features(features, logits, user_rows)
        with torch.no_grad():
            w = torch.softmax(logits.detach(), dim=-1)[user_rows]  # (n, K)
            q = (features["gram"] @ w[:, :, None])[..., 0]  # (n, K)
            u = (w * q).sum(-1).clamp_min(1e-16).sqrt()
            dc, dr = features["dot_c"] / features["norm_c"][:, None], features["dot_r"] / features["norm_r"][:, None]
            a = (w * dc).sum(-1) - (w * dr).sum(-1)  # (A_c / |f_c| - A_r / |f_r|)
            scale = self.scale()
            m = scale * a / u
            dm_dw = scale * ((dc - dr) / u[:, None] - (a / u.pow(3))[:, None] * q)
            grad = w * (dm_dw - (w * dm_dw).sum(-1, keepdim=True))
        return m, grad
