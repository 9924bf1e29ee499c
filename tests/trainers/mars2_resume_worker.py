"""Train a small 2-agent MARS² run (optionally resuming) and dump what must survive a crash, as JSON.

python mars2_resume_worker.py OUTPUT_DIR {fresh,resume} RESULT.json [heterogeneous|homogeneous]
"""

import hashlib
import json
import sys

import torch

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer


def checksum(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode() + p.detach().float().numpy().tobytes())
    return h.hexdigest()


AGENTS = {
    "heterogeneous": [
        {"name": "qwen", "model": "trl-mars/tiny-qwen2"},
        {"name": "llama", "model": "trl-mars/tiny-llama"},
    ],
    "homogeneous": [
        {"name": "qwen", "model": "trl-mars/tiny-qwen2", "system_prompt": "You write Python."},
        {"name": "llama", "system_prompt": "You fix Python."},
    ],
}


def main(output_dir: str, resume: bool, result: str, agent_mode: str = "heterogeneous") -> None:
    torch.set_num_threads(1)
    train, _ = code_task_splits(12, 1, seed=1)
    args = MultiAgentTreeConfig(
        output_dir=output_dir,
        agents=AGENTS[agent_mode],
        agent_mode=agent_mode,
        max_nodes=3,
        trees_per_step=2,
        per_device_train_batch_size=4,
        max_completion_length=12,
        max_steps=4,
        save_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=3,
        sandbox_timeout=20.0,
    )
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    trainer.train(resume_from_checkpoint=True if resume else None)
    state = trainer.method_state()
    out = {
        "resumed_from": trainer.resumed_from,
        "search": state["search"],
        "buffers": {k: v["buffer"] for k, v in state["policies"].items()},
        "updates": {k: v["updates"] for k, v in state["policies"].items()},
        "weights": {p.name: checksum(p.model) for p in trainer.policies},
        "trees": state["trees"],
        "learning_rates": [trainer.lr_scheduler.get_last_lr(), [p.scheduler.get_last_lr() for p in trainer.policies]],
    }
    with open(result, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "resume", *sys.argv[3:5])
