"""Evaluation of a recommender LLM on ReRec tasks: accuracy (hit@1), NDCG@K and format rate, greedy or sampled."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trl_mars.rewards.rerec import extract_boxed, ndcg_at_k, parse_ground_truth


@dataclass
class RecEvalResult:
    """accuracy = fraction whose first boxed title is a ground-truth title; ndcg = mean NDCG@k (0 without box)."""

    accuracy: float
    ndcg: float
    format_rate: float
    num_queries: int


def score_completions(completions: list[str], ground_truths: list, k: int) -> RecEvalResult:
    """Accuracy, mean NDCG@k and boxed-answer rate of completions against their ground truths."""
    hits, ndcgs, boxed_count = 0.0, 0.0, 0
    for text, truth in zip(completions, ground_truths, strict=True):
        truth, boxed = parse_ground_truth(truth), extract_boxed(text)
        if boxed is None:
            continue
        boxed_count += 1
        hits += ndcg_at_k(boxed, truth, 1)
        ndcgs += ndcg_at_k(boxed, truth, k)
    n = len(completions)
    return RecEvalResult(hits / n, ndcgs / n, boxed_count / n, n)


@torch.no_grad()
def evaluate_recommender(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    k: int = 1,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    temperature: float | None = None,
    num_samples: int = 1,
) -> RecEvalResult:
    """Decode every ``prompt`` of ``dataset`` and score the answers against ``ground_truth``: greedily, or with
    ``temperature`` ``num_samples`` samples per prompt (the metrics then average over all samples, as the training
    reward does)."""
    if temperature is None and num_samples != 1:
        raise ValueError("num_samples > 1 needs a sampling temperature")
    sampling = (
        {"do_sample": False}
        if temperature is None
        else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}  # as GRPO samples
    )
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    completions = []
    for start in range(0, len(dataset), batch_size):
        prompts = dataset[start : start + batch_size]["prompt"]
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        out = model.generate(
            **batch,
            **sampling,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples,
            pad_token_id=tokenizer.pad_token_id,
        )
        completions += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    tokenizer.padding_side = side
    model.train(was_training)
    truths = [truth for truth in dataset["ground_truth"] for _ in range(num_samples)]
    return score_completions(completions, truths, k)
