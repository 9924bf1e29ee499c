"""Model cards of ours for trained agents and models: base model, method, citation, config, metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

_KEPT_CONFIG = (
    "learning_rate",
    "beta",
    "epsilon",
    "epsilon_high",
    "loss_type",
    "importance_sampling_level",
    "max_completion_length",
    "temperature",
    "per_device_train_batch_size",
    "max_steps",
    "num_train_epochs",
    "max_nodes",
    "trees_per_step",
    "posterior",
    "selection_order",
    "reward_shaping",
    "shaping_gamma",
    "shaping_lambda",
    "agent_mode",
    "seed",
)


def model_card_text(
    base_model: str | None,
    method: str,
    paper: dict[str, str],
    tags: list[str],
    config: dict[str, Any],
    metrics: dict[str, float] | None = None,
    extra: str = "",
    dataset_name: str | None = None,
) -> str:
    """README.md text: YAML front matter for the Hub, then what was trained, how, and how well."""
    front = {"library_name": "transformers", "tags": list(tags), "pipeline_tag": "text-generation"}
    if base_model:
        front["base_model"] = base_model
    if dataset_name:
        front["datasets"] = [dataset_name]
    kept = {k: config[k] for k in _KEPT_CONFIG if k in config}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {method} model trained with trl-mars",
        "",
        f"Fine-tuned from `{base_model}` with **{method}** ([arXiv {paper['id']}](https://arxiv.org/abs/{paper['id']}): "
        f"*{paper['title']}*) using [trl-mars](https://github.com/trl-mars/trl-mars) on top of TRL.",
        "",
    ]
    if extra:
        lines += [extra, ""]
    lines += ["## Training configuration", "", "```json", json.dumps(kept, indent=2, default=str), "```", ""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]
        lines += [""]
    lines += ["## Citation", "", "```bibtex", paper["citation"], "```", ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, **kwargs: Any) -> Path:
    """Write ``README.md`` into ``folder`` (created if needed); kwargs as ``model_card_text``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "README.md"
    path.write_text(model_card_text(**kwargs), encoding="utf-8")
    return path
