"""Each agent's learning-rate schedule spans exactly the run: it steps once per Trainer step, however many updates
the agent takes (several per step with one-node updates; some steps none with two-node updates), so it never wraps
around, ends early, or stalls for an agent that rarely updates."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import tiny_mars2_config  # noqa: E402

STEPS = 4
SCHEDULE = {  # factor of the peak rate at Trainer step k of STEPS (no warm-up), as transformers defines them
    "constant": lambda k: 1.0,
    "linear": lambda k: (STEPS - k) / STEPS,
    "cosine": lambda k: 0.5 * (1 + math.cos(math.pi * k / STEPS)),
}


@pytest.mark.filterwarnings("error:Detected call of")  # a step without an update of an agent is intended
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("schedule", list(SCHEDULE))
def test_every_agent_ends_its_schedule_with_the_run(tmp_path, tiny_qwen2_path, tiny_llama_path, schedule, batch):
    train, _ = code_task_splits(8, 0, seed=0)
    agents = [
        {"name": "qwen", "model": tiny_qwen2_path},
        {"name": "llama", "model": tiny_llama_path, "learning_rate": 2e-2},
    ]
    args = tiny_mars2_config(
        tmp_path, agents, max_steps=STEPS, max_nodes=3, logging_steps=1, lr_scheduler_type=schedule, beta=0.0,
        per_device_train_batch_size=batch,
    )  # fmt: skip
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    try:
        trainer.train()
    finally:
        trainer.sandbox.close()
    rows = [r for r in trainer.state.log_history if "learning_rate" in r and "agents/qwen/learning_rate" in r]
    assert len(rows) == STEPS
    updates = sum(p.updates for p in trainer.policies)
    assert updates == STEPS * 3 if batch == 1 else updates < STEPS * 2  # 3 nodes per round; 2-node updates: fewer
    for name, peak in (("qwen", 1e-2), ("llama", 2e-2)):
        logged = [r[f"agents/{name}/learning_rate"] for r in rows]
        assert logged == pytest.approx([peak * SCHEDULE[schedule](k) for k in range(STEPS)]), name
        assert logged[-1] == pytest.approx(peak * SCHEDULE[schedule](STEPS - 1))  # the schedule's last value
        # the same schedule as the Trainer's own learning_rate, scaled to the agent's peak
        assert logged == pytest.approx([r["learning_rate"] * peak / 1e-2 for r in rows])
        assert all(a >= b for a, b in zip(logged, logged[1:]))  # never wraps around
        policy = next(p for p in trainer.policies if p.name == name)
        assert policy.scheduler.last_epoch == STEPS  # progress exactly 1 at the end, never beyond
