"""Configuration of ``ReasoningRecTrainer`` (ReRec): GRPOConfig plus the reward, RAAE and curriculum fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from trl_mars.rewards.rerec import SCALE_MODES, SEGMENT_MODES


@dataclass
class ReRecConfig(GRPOConfig):
    """GRPOConfig with ReRec's fields; defaults follow the authors' ``scripts/train.sh``.

    Changed GRPO defaults: ``num_generations=5`` (with ``per_device_train_batch_size=10``), ``learning_rate=5e-6``, ``beta=0.01`` (k3 KL in the loss),
    ``epsilon=0.2``, ``loss_type="dapo"`` (token-mean over the global batch), ``max_completion_length=768``.

    Reward: ``r = format_weight * format + NDCG@ndcg_k + qas_weight * QAS + pas_weight * PAS`` (used when
    ``reward_weights`` is not given). RAAE (``use_raae``): segments naming a wrong title get
    ``r - raae_penalty * |r|``; token advantages are normalised per prompt group with ``raae_eps``, scaled as
    ``scale_rewards`` says (``"group"``: the group's token std, the paper; ``"batch"``; ``"none"``), and zeroed for
    groups with no correct answer when ``raae_zero_all_wrong``.
    Curriculum (``use_curriculum``): queries with difficulty < ``curriculum_tau`` are dropped each epoch.
    """

    num_generations: int | None = field(default=5, metadata={"help": "Completions per prompt (G)."})
    per_device_train_batch_size: int = field(
        default=10, metadata={"help": "Completions per device per step (a multiple of num_generations=5)."}
    )
    learning_rate: float = field(default=5e-6, metadata={"help": "AdamW learning rate."})
    beta: float = field(default=0.01, metadata={"help": "KL coefficient (k3 estimator in the loss)."})
    max_completion_length: int | None = field(default=768, metadata={"help": "Maximum completion length."})
    ndcg_k: int = field(default=1, metadata={"help": "K of the NDCG@K reward and of the curriculum difficulty."})
    format_weight: float = field(default=0.1, metadata={"help": "Weight of the +-0.5 format term."})
    qas_weight: float = field(default=0.01, metadata={"help": "Weight of QAS (item-attribute graph); 0 disables."})
    pas_weight: float = field(default=0.01, metadata={"help": "Weight of PAS (LightGCN embeddings); 0 disables."})
    use_raae: bool = field(default=True, metadata={"help": "Reasoning-aware (B, T) token advantages."})
    raae_penalty: float = field(default=0.3, metadata={"help": "w_penalty in [0, 1): segment reward r - w|r|."})
    raae_segment: str = field(default="line", metadata={"help": "RAAE segments: 'line' or 'paragraph'."})
    raae_eps: float = field(default=1e-6, metadata={"help": "eps in (r - mean) / (std + eps)."})
    raae_zero_all_wrong: bool = field(
        default=False,
        metadata={
            "help": "Zero the advantages of groups with no correct answer (the paper's normalisation, the default, "
            "gives a boxed wrong answer a positive advantage against unboxed ones)."
        },
    )
    use_curriculum: bool = field(default=True, metadata={"help": "Online curriculum over the training queries."})
    curriculum_tau: float = field(default=0.1, metadata={"help": "Queries with difficulty below tau are mastered."})

    def __post_init__(self):
        if self.ndcg_k < 1:
            raise ValueError(f"ndcg_k must be >= 1, got {self.ndcg_k}")
        for name in ("format_weight", "qas_weight", "pas_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0.0 <= self.raae_penalty < 1.0:
            raise ValueError(f"raae_penalty must be in [0, 1), got {self.raae_penalty}")
        if self.raae_segment not in SEGMENT_MODES:
            raise ValueError(f"raae_segment must be one of {SEGMENT_MODES}, got {self.raae_segment!r}")
        if not self.raae_eps > 0:
            raise ValueError(f"raae_eps must be > 0, got {self.raae_eps}")
        if not 0.0 <= self.curriculum_tau <= 1.0:
            raise ValueError(f"curriculum_tau must be in [0, 1], got {self.curriculum_tau}")
        if self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 for group-normalised advantages, got {self.num_generations}"
            )
        super().__post_init__()
        if self.scale_rewards not in SCALE_MODES:
            raise ValueError(f"scale_rewards must be one of {SCALE_MODES} (or a bool), got {self.scale_rewards!r}")
        if self.use_raae and self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "multi_objective_aggregation must be 'sum_then_normalize' with use_raae=True (RAAE normalises the "
                f"summed token rewards), got {self.multi_objective_aggregation!r}"
            )
