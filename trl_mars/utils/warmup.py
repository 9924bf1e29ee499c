"""SFT warm-up of small models before RL, with stock ``trl.SFTTrainer`` (what users of small models do).

A randomly initialised tiny model never produces a parseable answer, so RL has no signal; a short SFT on
reference (prompt, answer) chats gives it one. Recipes call this; the methods themselves do not need it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trl_mars.utils.fsdp import wrap_own_layers


def sft_warmup(
    model_path: str,
    chats: Sequence[list[dict[str, str]]],
    output_dir: str | os.PathLike,
    max_steps: int = 200,
    learning_rate: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    use_cpu: bool = True,
) -> str:
    """Fit ``model_path`` on the last (assistant) turn of each chat for ``max_steps``; save to ``output_dir``."""
    if not chats or any(not chat or chat[-1].get("role") != "assistant" for chat in chats):
        raise ValueError("chats: every warm-up chat must end with an assistant turn")
    data = Dataset.from_list([{"prompt": list(chat[:-1]), "completion": [chat[-1]]} for chat in chats])
    args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(10, max_steps // 10),
        logging_steps=max(1, max_steps // 5),
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        seed=seed,
        use_cpu=use_cpu,
        bf16=not use_cpu,
    )
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=data)
    wrap_own_layers(trainer.accelerator, trainer.model)  # an earlier warm-up may have bound FSDP to its layers
    trainer.train()
    trainer.save_model(str(output_dir))
    return str(output_dir)
