"""Clipped policy-gradient loss shared by the RL trainers (GRPO / DAPO / GSPO), with k3 KL and truncated IS.

``old`` is the policy that produced the sample, in training numerics (TRL's ``old_per_token_logps``); ``sampling``
is what the sampler recorded. Token level (GRPO/DAPO): ratio_t = exp(logp_t - old_t). Sequence level (GSPO): one
ratio per sequence, s = exp(mean_t (logp_t - old_t)). Surrogate: -min(r * A, clip(ratio, 1 - eps_low, 1 + eps_high)
* A) with r = ratio, or r = min(ratio, delta) with two-sided clipping (``delta``, TRL's). KL (k3):
exp(ref - logp) - (ref - logp) - 1, added as beta * KL per token, times the ratio when ``kl_importance_correction``
(TRL's ``use_bias_correction_kl``: the KL is estimated on samples of ``old``). Truncated importance sampling (TIS):
every token's policy loss is multiplied by min(exp(old_t - sampling_t), cap), detached, which corrects only for
sampling from an engine (e.g. vLLM) whose log-probs differ from the trained model's.
Aggregation follows TRL's ``loss_type``: ``grpo`` (mean over a sequence, then over sequences), ``bnpo``
(mean over all tokens of the batch), ``dapo`` (sum over tokens / ``num_items``, the token count of the whole
update), ``dr_grpo`` (sum / (batch x max_completion_length)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")


@dataclass(frozen=True)
class PolicyLossConfig:
    loss_type: str = "grpo"
    importance_sampling_level: str = "sequence"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    tis_cap: float | None = 2.0
    max_completion_length: int | None = None
    delta: float | None = None
    kl_importance_correction: bool = False

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError(
                f"importance_sampling_level must be 'token' or 'sequence', got {self.importance_sampling_level!r}"
            )
        if self.loss_type == "dr_grpo" and not self.max_completion_length:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        if self.epsilon_low < 0 or self.epsilon_high < 0:
            raise ValueError(f"epsilon must be >= 0, got ({self.epsilon_low}, {self.epsilon_high})")
        if self.delta is not None and self.delta <= 1 + self.epsilon_high:
            raise ValueError(f"delta must be > 1 + epsilon_high = {1 + self.epsilon_high}, got {self.delta}")


def k3_kl(per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (always >= 0)."""
    delta = ref_per_token_logps - per_token_logps
    return torch.exp(delta) - delta - 1


def policy_loss(
    per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: PolicyLossConfig,
    old_per_token_logps: torch.Tensor | None = None,
    ref_per_token_logps: torch.Tensor | None = None,
    sampling_per_token_logps: torch.Tensor | None = None,
    num_items: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one micro-batch and detached statistics.

    Shapes: logps and ``mask`` (B, T); ``advantages`` (B,) or (B, T). ``old`` defaults to ``logps.detach()``
    (a fresh sample: no update since it was drawn); ``num_items`` is the token count the ``dapo`` loss divides by
    (defaults to this micro-batch's).
    """
    mask = mask.to(per_token_logps.dtype)
    old = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    log_ratio = per_token_logps - old
    if config.importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - config.epsilon_low, 1 + config.epsilon_high)
    unclipped = ratio if config.delta is None else torch.clamp(ratio, max=config.delta)
    per_token = -torch.min(unclipped * adv, clipped * adv)
    stats: dict[str, torch.Tensor] = {}
    if config.tis_cap is not None and sampling_per_token_logps is not None:
        tis = torch.clamp(torch.exp(old - sampling_per_token_logps), max=config.tis_cap).detach()
        per_token = per_token * tis
        stats["tis_weight"] = (tis * mask).sum() / mask.sum().clamp(min=1.0)
    if config.beta != 0.0:
        if ref_per_token_logps is None:
            raise ValueError("beta != 0 needs ref_per_token_logps")
        kl = k3_kl(per_token_logps, ref_per_token_logps)
        stats["kl"] = ((kl * mask).sum() / mask.sum().clamp(min=1.0)).detach()
        per_token = per_token + config.beta * (kl * ratio if config.kl_importance_correction else kl)
    per_token = per_token * mask
    if config.loss_type == "grpo":
        loss = (per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif config.loss_type == "bnpo":
        loss = per_token.sum() / mask.sum().clamp(min=1.0)
    elif config.loss_type == "dapo":
        loss = per_token.sum() / max(float(num_items if num_items is not None else mask.sum()), 1.0)
    else:
        loss = per_token.sum() / (per_token.size(0) * config.max_completion_length)
    low = (ratio < 1 - config.epsilon_low) & (adv < 0)
    high = (ratio > 1 + config.epsilon_high) & (adv > 0)
    clip_mask = (low | high).to(mask.dtype).expand_as(mask)
    stats["clip_ratio"] = ((clip_mask * mask).sum() / mask.sum().clamp(min=1.0)).detach()
    return loss, stats
