"""One rank of the 2-process CPU DDP run of ``MultiAgentTreeTrainer`` (launched by ``test_mars2_distributed.py``).

    torchrun --nproc_per_node 2 tests/trainers/mars2_ddp_worker.py OUT_DIR QWEN2_PATH LLAMA_PATH MODE

MODE: ``ddp`` or ``lockstep`` (heterogeneous agents), or ``homogeneous`` (DDP, the llama agent shares qwen's
weights and differs by its system prompt).

Trains two tiny agents (qwen2 + llama) for 2 steps, then runs ``evaluate_search`` on 3 held-out problems, and
writes ``OUT_DIR/rank<r>.json``: world size, whether each agent's model is DDP-wrapped, its update count and
credited samples, a checksum of its parameters after training, the problems this rank searched, its generation
calls (model, synced_gpus), and for the evaluation the problems it searched, its per-tree metrics and the
returned (gathered) metrics. ``lockstep`` turns on the search's lockstep across processes, which the trainer uses
under FSDP (not available on CPU).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

from trl_mars.data.code_tasks import code_task_splits  # noqa: E402
from trl_mars.search import TransformersBackend  # noqa: E402
from trl_mars.trainers import mars2_trainer  # noqa: E402
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from mars2_helpers import force_advantages, tiny_mars2_config  # noqa: E402


def checksum(model: torch.nn.Module) -> float:
    """Order-sensitive float64 sum of every parameter (equal across ranks iff the replicas agree)."""
    total = 0.0
    for i, (_, p) in enumerate(sorted(model.named_parameters())):
        total += float(p.detach().double().sum()) * (1 + i % 7) + float(p.detach().double().abs().sum())
    return total


def main(out_dir: str, qwen2: str, llama: str, mode: str) -> None:
    if mode == "lockstep":
        MultiAgentTreeTrainer.lockstep = property(lambda self: True)
    calls: list[tuple[str, bool | None]] = []
    generate = TransformersBackend.generate

    def recording_generate(self, prompts, *a, **kw):
        calls.append((Path(self.tokenizer.name_or_path).name, self.synced_gpus))
        return generate(self, prompts, *a, **kw)

    TransformersBackend.generate = recording_generate
    train, held_out = code_task_splits(8, 3, seed=0)
    agents = [{"name": "qwen", "model": qwen2}, {"name": "llama", "model": llama}]
    if mode == "homogeneous":
        agents = [{"name": "qwen", "model": qwen2}, {"name": "llama", "system_prompt": "You fix Python code."}]
    args = tiny_mars2_config(
        Path(out_dir) / "run",
        agents,
        agent_mode="homogeneous" if mode == "homogeneous" else "heterogeneous",
        max_steps=2,
        max_nodes=4,  # enough agent draws for the ranks' generation calls to differ without lockstep
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        shuffle_dataset=False,
    )
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    searched: list[str] = []
    run_search = trainer.run_search

    def recording_run_search(problems, *a, **kw):
        searched.extend(p.question for p in problems)
        return run_search(problems, *a, **kw)

    trainer.run_search = recording_run_search
    # each rank gets different non-zero advantages: only DDP's gradient averaging keeps the replicas equal
    rank = trainer.accelerator.process_index
    force_advantages(trainer, lambda i: (1.0 if (i + rank) % 2 else -1.0) * (1 + rank))
    credited: dict[str, int] = {p.name: 0 for p in trainer.policies}
    written: dict[str, int] = {}  # nodes per agent (homogeneous: several agents per policy)
    credit = trainer.credit

    def counting_credit(trees):
        samples = credit(trees)
        for sample in samples:
            credited[trainer.policy_of[sample["agent"]].name] += 1
            written[sample["agent"]] = written.get(sample["agent"], 0) + 1
        return samples

    trainer.credit = counting_credit
    acc = trainer.accelerator
    before = {p.name: checksum(acc.unwrap_model(p.model)) for p in trainer.policies}
    trainer.train()
    calls_in_training = len(calls)
    searched_in_training = list(searched)
    searched.clear()
    per_tree: list[dict] = []
    tree_metrics = mars2_trainer.tree_metrics
    mars2_trainer.tree_metrics = lambda *a, **kw: per_tree.append(tree_metrics(*a, **kw)) or per_tree[-1]
    evaluation = trainer.evaluate_search(held_out, max_nodes=2)
    result = {
        "rank": acc.process_index,
        "world_size": acc.num_processes,
        "trees": len(searched_in_training),
        "problems": searched_in_training,
        "generate_calls": calls[:calls_in_training],
        "nodes_by_agent": written,
        "eval_problems": searched,
        "eval_per_tree": per_tree,
        "eval_metrics": evaluation,
        "eval_generate_calls": calls[calls_in_training:],
        "agents": {
            p.name: {
                "ddp": isinstance(p.model, torch.nn.parallel.DistributedDataParallel),
                "updates": p.updates,
                "samples": credited[p.name],
                "batch": args.per_device_train_batch_size * args.agent_gradient_accumulation_steps,
                "checksum_before": before[p.name],
                "checksum": checksum(acc.unwrap_model(p.model)),
            }
            for p in trainer.policies
        },
    }
    trainer.sandbox.close()
    path = Path(out_dir) / f"rank{acc.process_index}.json"
    path.write_text(json.dumps(result, indent=1))
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
