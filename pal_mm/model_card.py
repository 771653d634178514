"""Model cards (``README.md``) for saved models, as ``huggingface_hub.ModelCard`` objects: the
metadata (library, licence, tags, base model, evaluation results as a model index) in
``ModelCardData``, then a short description and usage. No local paths: they stay on the machine."""

from __future__ import annotations

import json

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from encoders import encoder_base_model

from .splitting import mixture_outcome


def loss_description(head) -> str:
    """A head's training loss in words, e.g. ``Bradley-Terry, labels taken as flipped at rate 0.2``."""
    if head.loss_type != "bt":
        return "hinge on the reward margin"
    eps = head.label_noise
    return f"Bradley-Terry, labels taken as flipped at rate {eps:g}" if eps > 0 else "Bradley-Terry"


def public_data_info(data: dict) -> dict:
    """Training-data facts without local file paths (keys ending in _file, _path or _dir)."""
    return {k: v for k, v in (data or {}).items() if not str(k).endswith(("_file", "_path", "_dir"))}


def eval_results(metrics: dict, model_name: str) -> list[EvalResult]:
    """The validation accuracy as a Hub evaluation result (when there is one)."""
    acc = (metrics or {}).get("val_accuracy")
    if not isinstance(acc, (int, float)):
        return []
    return [EvalResult(task_type="text-classification", task_name="pairwise preference", dataset_type="custom",
                       dataset_name="validation pairs of the seen users", metric_type="accuracy", metric_value=float(acc))]


def build_card(card_data: ModelCardData, lines: list[str]) -> ModelCard:
    return ModelCard("---\n" + card_data.to_yaml() + "\n---\n\n" + "\n".join(lines))


def _card_data(tags: list[str], base: str | None, pal: dict, metrics: dict, name: str, kwargs: dict) -> ModelCardData:
    extra = {k: v for k, v in kwargs.items() if k not in ("description", "model_name")}
    model_name = kwargs.get("model_name") or name
    return ModelCardData(library_name="pal-mm", license="apache-2.0", tags=tags, base_model=base, model_name=model_name,
                         eval_results=eval_results(metrics, model_name) or None, pal=pal, **extra)


def k_selection_lines(sel: dict | None) -> list[str]:
    """A table of the Ks tried by ``--k auto`` (:mod:`pal_mm.selection`), or nothing."""
    if not sel:
        return []
    lines = ["", "## K chosen on validation", "", f"{sel['rule']}: **K = {sel['chosen']}**.", "",
             "| K | val loss | val accuracy | few-shot loss | few-shot accuracy | gain (SE) | accepted |",
             "|---|---|---|---|---|---|---|"]
    for r in sel["candidates"]:
        gain = "" if r.get("gain_se") is None else f"{r['gain_se']:+.1f}"
        lines.append(f"| {r['k']} | {r['val_loss']:.4f} | {r['val_accuracy']:.4f} | {r['fewshot_loss']:.4f} | "
                     f"{r['fewshot_accuracy']:.4f} | {gain} | {'yes' if r['accepted'] else 'no'} |")
    return lines


def pal_model_card(model, **kwargs) -> ModelCard:
    """The card of a full PAL model; ``kwargs``: ``description`` (a paragraph), ``model_name``, or any
    other ``ModelCardData`` field (``datasets=``, ``language=``...)."""
    c = model.config
    metrics = model.metrics or {}
    data = public_data_info(model.data_info)
    pal = {"model_type": c.model_type, "k": c.k, "num_users": len(model.users), "encoder": model.encoder.name}
    if metrics:
        pal["metrics"] = metrics
    card_data = _card_data(["reward-model", "personalized-alignment", "pal", c.model_type], model.encoder.base_model, pal, metrics,
                           f"pal-mm {c.model_type} K={c.k}", kwargs)
    if model.head.simplex_users:
        users_are = f"every user is a\npoint on the {c.k}-simplex of shared prototypes (PAL, Chen et al., ICLR 2025)."
    elif model.head.has_user_state:
        users_are = f"every user is a\nlatent vector ({model.head.state_dim} numbers) read by one shared reward network."
    else:
        users_are = "one reward\nfunction shared by every user (a baseline)."
    lines = [
        f"# PAL reward model ({c.model_type}, K = {c.k})",
        "",
        "A personalised reward model trained with [pal-mm](https://github.com/pal-mm/pal-mm): " + users_are,
        "",
        *([kwargs["description"], ""] if kwargs.get("description") else []),
        "| | |",
        "|---|---|",
        f"| model | {c.model_type}, K = {c.k}, projector `{c.projector}`, width {c.width} |",
        f"| encoder | `{model.encoder.name}` (prompt {c.prompt_dim}-d, item {c.item_dim}-d) |",
        f"| loss | {loss_description(model.head)} |",
        f"| users | {len(model.users)} |",
        f"| learned parameters | {model.num_learned_parameters():,} |",
    ]
    if data:
        lines.append(f"| data | {json.dumps(data, default=str)} |")
    outcome = mixture_outcome(metrics)
    if outcome:
        lines += ["", "## Mixture", "", f"K = {c.k} started from a fitted smaller model: {outcome}."]
    lines += k_selection_lines(metrics.get("k_selection"))
    if metrics:
        lines += ["", "## Metrics", "", "```json", json.dumps(metrics, indent=2, default=str), "```"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from pal_mm import PALModel",
        "model = PALModel.from_pretrained(\"path/or/repo-id\")",
        "model.reward(\"a prompt\", [\"response A\", \"response B\"], user=model.users[0])",
        "```",
        "",
    ]
    return build_card(card_data, lines)


def personal_model_card(cfg: dict, c, **kwargs) -> ModelCard:
    """The card of an exported one-user reward model (``pal_mm.export``): ``cfg`` is its
    config.json content, ``c`` its PALConfig; ``kwargs`` as for :func:`pal_model_card`."""
    from .mixture import describe_mixture

    enc, mixture, source = cfg["encoder"], cfg["mixture"], cfg.get("source_model", {})
    image = enc.get("item_modality") == "image"
    modality_tag = {"image": "text-to-image", "text": "text", "vector": "embeddings"}.get(enc.get("item_modality"))
    tags = ["reward-model", "personalized-alignment", "pal", c.model_type, "personal-reward-model"] + ([modality_tag] if modality_tag else [])
    metrics = source.get("metrics") or {}
    pal = {"format": cfg["pal_mm_format"], "model_type": c.model_type, "k": c.k,
           "exported_for": {k: v for k, v in mixture.items() if k in ("source", "user", "prototype", "logits")},
           "weights": [round(float(x), 8) for x in mixture["weights"]],
           "num_users": source.get("num_users"), "encoder": enc["name"], "encoder_fingerprint": enc.get("fingerprint"),
           "encoder_fine_tuned": bool(enc.get("fine_tuned"))}
    if source.get("user_group") is not None:
        pal["user_group"] = source["user_group"]
    if "reward_range" in cfg:
        pal["reward_range"] = [round(float(x), 6) for x in cfg["reward_range"]]
    if metrics:
        pal["metrics"] = metrics
    who = describe_mixture(mixture)
    card_data = _card_data(tags, encoder_base_model(enc["name"], enc.get("config") or {}), pal, metrics,
                           f"pal-mm reward model for {who}", kwargs)
    item = "image" if image else "response"
    lines = [
        f"# PAL reward model for {who} ({c.model_type}, K = {c.k})",
        "",
        "A standard scalar reward model exported with [pal-mm](https://github.com/pal-mm/pal-mm) from a personalised",
        f"PAL model (Chen et al., ICLR 2025): the mixture of the {c.k} shared prototypes is fixed to",
        f"`{pal['weights']}` ({who}), so `(prompt, {item}) -> one number`.",
        "",
        *([kwargs["description"], ""] if kwargs.get("description") else []),
        "| | |",
        "|---|---|",
        f"| model | {c.model_type}, K = {c.k}, projector `{c.projector}`, width {c.width} |",
        f"| encoder | `{enc['name']}` {json.dumps(_public_options(enc.get('config') or {}), default=str)} "
        f"({'fine-tuned weights bundled in encoder.safetensors' if enc.get('fine_tuned') else 'referenced, not bundled'}) |",
        f"| encoder fingerprint | `{enc.get('fingerprint')}` |",
        f"| exported from | a PAL model with {source.get('num_users')} users |",
    ]
    if "reward_range" in cfg:
        lo, hi = cfg["reward_range"]
        lines.append(f"| reward range | [{lo:.4f}, {hi:.4f}] (scaled cosine) |")
    if metrics:
        lines += ["", "## Metrics of the source model", "", "```json", json.dumps(metrics, indent=2, default=str), "```"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from pal_mm.export import PersonalRewardModel",
        "rm = PersonalRewardModel.from_pretrained(\"path/or/repo-id\")",
        f"rm([\"a prompt\"], [\"{'path/to/image.png' if image else 'a response'}\"])  # -> [reward]",
        "```",
        "",
        "As a TRL reward function (`GRPOTrainer(reward_funcs=[...])`):",
        "",
        "```python",
        "from pal_mm.rlhf import as_reward_function",
        "reward_fn = as_reward_function(\"path/or/repo-id\")",
        "```",
        "",
        "Command line: `pal-mm score --model path/to/this/folder --prompt P --response R`.",
        "",
    ]
    return build_card(card_data, lines)


def _public_options(options: dict) -> dict:
    """Encoder options for the card: local paths replaced by their last component."""
    from pathlib import PurePath

    out = {}
    for k, v in options.items():
        out[k] = PurePath(v).name if isinstance(v, str) and v.startswith(("/", "~", ".")) else v
    return out
