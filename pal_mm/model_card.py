"""The model card (``README.md`` with YAML front matter) written next to every saved model."""

from __future__ import annotations

import json

import yaml

ENCODER_BASE_MODELS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def _base_model(model) -> str | None:
    cfg = model.encoder.config()
    for key in ("model_name_or_path", "model_name", "model_id"):
        if isinstance(cfg.get(key), str):
            return cfg[key]
    return ENCODER_BASE_MODELS.get(model.encoder.name)


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
        front["metrics"] = model.metrics
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
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
