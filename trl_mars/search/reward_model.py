"""MARS²-T+ reward-model guidance: a learned reward model scores candidate answers for final selection.

At test time only the public tests are known, and several nodes often pass all of them. ``select_final`` then lets
a reward model choose among the nodes with the best public score. A reward model is any callable
``(question, node) -> float``; ``SequenceClassifierRewardModel`` wraps a sequence-classification checkpoint with a
single output (``num_labels=1``, what TRL's ``RewardTrainer`` trains), scoring the chat
``[user: question, assistant: node.completion]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trl_mars.search.tree import Node

RewardModel = Callable[[str, Node], float]
"""``reward_model(question, node)``: higher is better."""


class SequenceClassifierRewardModel:
    """``(question, node) -> logit`` of a one-label sequence-classification model on the question and the node's
    answer, rendered with the tokenizer's chat template (``question\\n\\nanswer`` when it has none)."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int | None = None) -> None:
        if getattr(model.config, "num_labels", None) != 1:
            raise ValueError(
                f"reward model {model.config._name_or_path!r}: needs one output (num_labels=1), "
                f"got num_labels={model.config.num_labels}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: str | torch.device | None = None
    ) -> SequenceClassifierRewardModel:
        """Load a hub id or local folder with ``AutoModelForSequenceClassification`` (float32 on CPU, ``auto`` on
        a GPU)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from trl_mars.utils.recipes import resolve_model_path

        path = resolve_model_path(name_or_path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float32 if device.type == "cpu" else "auto"
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, AutoTokenizer.from_pretrained(path))

    def text(self, question: str, node: Node) -> str:
        answer = node.completion or node.code or ""
        if self.tokenizer.chat_template:
            chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            return self.tokenizer.apply_chat_template(chat, tokenize=False)
        return f"{question}\n\n{answer}"

    @torch.no_grad()
    def __call__(self, question: str, node: Node) -> float:
        batch = self.tokenizer(
            self.text(question, node),
            return_tensors="pt",
            truncation=self.max_length is not None,
            max_length=self.max_length,
            add_special_tokens=False,
        )
        device = next(self.model.parameters()).device
        logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits
        return float(logits[0, 0])


def check_reward_model(name_or_path: str, where: str) -> None:
    """Before any weight loads: ``name_or_path`` resolves (``check_model_reference``) to a sequence-classification
    checkpoint with one output; fails naming ``where`` (a config field or CLI flag)."""
    from transformers import AutoConfig

    from trl_mars.utils.recipes import check_model_reference, resolve_model_path

    check_model_reference(name_or_path, where)
    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(
            f"{where}: {name_or_path!r} is not a sequence-classification model (architectures {architectures}); "
            "a reward model scores (question, answer) with one output"
        )
    if config.num_labels != 1:
        raise ValueError(
            f"{where}: {name_or_path!r} needs one output (num_labels=1), got num_labels={config.num_labels}"
        )


def resolve_reward_model(reward_model: str | RewardModel | None, device: Any = None) -> RewardModel | None:
    """A callable as is; a model id or path loaded as a ``SequenceClassifierRewardModel``; None stays None."""
    if reward_model is None or callable(reward_model):
        return reward_model
    if isinstance(reward_model, str):
        return SequenceClassifierRewardModel.from_pretrained(reward_model, device)
    raise TypeError(
        f"reward_model must be a model id/path or a callable (question, node) -> float, got {reward_model!r}"
    )
