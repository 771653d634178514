"""The model card (``README.md`` with YAML front matter) written next to every saved model."""

from __future__ import annotations

import json

import yaml

ENCODER_BASE_MODELS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def front_matter(front: dict) -> list[str]:
    """The card's YAML metadata block (what the Hub reads), then a blank line."""
    return ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]


def _is_repo_id(text: str) -> bool:
    """A Hub repo id (``org/name``), not a local path: only those are valid ``base_model`` values."""
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not text.startswith(("/", ".", "~"))


def base_model_for(encoder_name: str, encoder_config: dict) -> str | None:
    """The encoder's Hub id when it is known (local directories are not Hub ids)."""
    for key in ("model_name_or_path", "model_name", "model_id"):
        value = encoder_config.get(key)
        if isinstance(value, str):
            value = value[len("hf-hub:"):] if value.startswith("hf-hub:") else value
            return value if _is_repo_id(value) else None
    return ENCODER_BASE_MODELS.get(encoder_name)


def hub_metric_names(metrics: dict) -> list[str]:
    """Hub ``metrics`` metadata is a list of metric ids; the values go in the ``pal`` section."""
    return ["accuracy"] if any("accuracy" in str(k) for k in metrics) else []


def _base_model(model) -> str | None:
    return base_model_for(model.encoder.name, model.encoder.config())


def model_card(model) -> str:
    c = model.config
    front = {
        "library_name": "pal-mm",
        "license": "apache-2.0",
        "tags": ["reward-model", "personalized-alignment", "pal", c.model_type],
    }
    base = _base_model(model)
    if base:
        front["base_model"] = base
    front["pal"] = {"model_type": c.model_type, "k": c.k, "num_users": len(model.users), "encoder": model.encoder.name}
    if model.metrics:
        if hub_metric_names(model.metrics):
            front["metrics"] = hub_metric_names(model.metrics)
        front["pal"]["metrics"] = model.metrics
    lines = [
        *front_matter(front),
        f"# PAL reward model ({c.model_type}, K = {c.k})",
        "",
        "A personalised reward model trained with [pal-mm](https://github.com/pal-mm/pal-mm): every user is a",
        f"point on the {c.k}-simplex of shared prototypes (PAL, Chen et al., ICLR 2025).",
        "",
        "| | |",
        "|---|---|",
        f"| model | {c.model_type}, K = {c.k}, projector `{c.projector}`, width {c.width} |",
        f"| encoder | `{model.encoder.name}` (prompt {c.prompt_dim}-d, item {c.item_dim}-d) |",
        f"| users | {len(model.users)} |",
        f"| learned parameters | {model.num_learned_parameters():,} |",
    ]
    if model.data_info:
        lines.append(f"| data | {json.dumps(model.data_info, default=str)} |")
    if model.metrics:
        lines += ["", "## Metrics", "", "```json", json.dumps(model.metrics, indent=2, default=str), "```"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from pal_mm import PALModel",
        "model = PALModel.from_pretrained(\"path/to/this/folder\")",
        "model.reward(\"a prompt\", [\"response A\", \"response B\"], user=model.users[0])",
        "```",
        "",
    ]
    return "\n".join(lines)


def personal_model_card(cfg: dict, c) -> str:
    """The card of an exported one-user reward model (``pal_mm.export``): ``cfg`` is its
    config.json content, ``c`` its PALConfig."""
    from .mixture import describe_mixture

    enc, mixture, source = cfg["encoder"], cfg["mixture"], cfg.get("source_model", {})
    image = enc.get("item_modality") == "image"
    modality_tag = {"image": "text-to-image", "text": "text", "vector": "embeddings"}.get(enc.get("item_modality"))
    front = {
        "library_name": "pal-mm",
        "license": "apache-2.0",
        "tags": ["reward-model", "personalized-alignment", "pal", c.model_type, "personal-reward-model"]
        + ([modality_tag] if modality_tag else []),
    }
    base = base_model_for(enc["name"], enc.get("config") or {})
    if base:
        front["base_model"] = base
    metrics = source.get("metrics") or {}
    if hub_metric_names(metrics):
        front["metrics"] = hub_metric_names(metrics)
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
    front["pal"] = pal
    who = describe_mixture(mixture)
    item = "image" if image else "response"
    lines = [
        *front_matter(front),
        f"# PAL reward model for {who} ({c.model_type}, K = {c.k})",
        "",
        "A standard scalar reward model exported with [pal-mm](https://github.com/pal-mm/pal-mm) from a personalised",
        f"PAL model (Chen et al., ICLR 2025): the mixture of the {c.k} shared prototypes is fixed to",
        f"`{pal['weights']}` ({who}), so `(prompt, {item}) -> one number`.",
        "",
        "| | |",
        "|---|---|",
        f"| model | {c.model_type}, K = {c.k}, projector `{c.projector}`, width {c.width} |",
        f"| encoder | `{enc['name']}` {json.dumps(enc.get('config') or {}, default=str)} "
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
    return "\n".join(lines)
