"""Step time of the degenerate MARS² trainer versus stock ``trl.GRPOTrainer`` on the same data and batch geometry.

    python benchmarks/trainer_step.py [--trees 2] [--generations 4] [--tokens 16] [--steps 4] [--warmup 1]

What is compared. ``MultiAgentTreeTrainer`` in its degenerate configuration (one agent, ``max_nodes =
num_generations``, ``max_depth=1``: GEN at the root only, ``reward_shaping="none"``) does what GRPO does: each
step, ``--trees`` T problems get ``--generations`` G completions each, every completion is scored by running its
code against the problem's tests, advantages are normalised per problem, and the policy takes one optimizer step
on the T*G completions. ``GRPOTrainer`` runs with ``num_generations=G``, ``per_device_train_batch_size=T*G`` and
one generation per step, so both take T prompts x G completions per step. Both score with the same ``Sandbox``
(GRPO through ``trl_mars.rewards.code.make_code_reward``, MARS² through its search verifier), use the same model
(a cached tiny Qwen2 config, ``--hidden``/``--layers``), the same embedded-task problems in the same order, the
same loss (``loss_type``, token-level ratios, ``--beta``), the same sampling settings and the same
``max_completion_length``. A random tiny model practically never emits EOS, so both generate ``--tokens`` tokens
per completion (the table prints the mean completion length of each side to show it).

Clock. A ``TrainerCallback`` takes the wall time from ``on_step_begin`` to ``on_step_end`` of every step:
generation, scoring, credit/advantages, forward, backward and the optimizer step. The first ``--warmup`` steps
are dropped; mean and median of the rest are printed. ``--rounds`` R > 1 runs both trainers R times, alternating
which goes first, and pools the steps (load on a shared machine only ever adds time; the median resists it).
Torch uses ``--threads`` threads (default 1). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_mars.data.code_tasks import code_task_splits  # noqa: E402
from trl_mars.rewards.code import make_code_reward  # noqa: E402
from trl_mars.sandbox import Sandbox, SandboxConfig  # noqa: E402
from trl_mars.testing import tiny_model_path  # noqa: E402
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig  # noqa: E402
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer  # noqa: E402


class StepTimer(TrainerCallback):
    """Wall seconds of every optimizer step (generation and scoring included)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def common_args(a: argparse.Namespace, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        max_steps=a.warmup + a.steps,
        per_device_train_batch_size=a.trees * a.generations,
        max_completion_length=a.tokens,
        learning_rate=1e-5,
        beta=a.beta,
        loss_type="grpo",
        importance_sampling_level="token",
        temperature=1.0,
        top_p=1.0,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        shuffle_dataset=False,
        seed=a.seed,
    )


def run_grpo(a, model_path: str, dataset, sandbox: Sandbox, tmp: str) -> tuple[list[float], float]:
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model_path,
        reward_funcs=make_code_reward("binary", sandbox),
        args=GRPOConfig(num_generations=a.generations, steps_per_generation=1, **common_args(a, f"{tmp}/grpo")),
        train_dataset=dataset,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return timer.times, statistics.fmean(lengths) if lengths else float("nan")


def run_mars2(a, model_path: str, dataset, sandbox: Sandbox, tmp: str) -> tuple[list[float], float]:
    timer = StepTimer()
    trainer = MultiAgentTreeTrainer(
        args=MultiAgentTreeConfig(
            agents=[{"name": "solo", "model": model_path}],
            max_nodes=a.generations,
            max_depth=1,
            reward_shaping="none",
            trees_per_step=a.trees,
            tis_cap=None,
            **common_args(a, f"{tmp}/mars2"),
        ),
        train_dataset=dataset,
        callbacks=[timer],
        sandbox=sandbox,
    )
    trainer.remove_callback(PrinterCallback)
    lengths: list[int] = []
    credit = trainer.credit

    def counting_credit(trees):
        lengths.extend(len(n.completion_ids) for t in trees for n in t.solutions)
        return credit(trees)

    trainer.credit = counting_credit
    trainer.train()
    return timer.times, statistics.fmean(lengths) if lengths else float("nan")


def summary(times: list[float], warmup: int, rounds: int) -> list[float]:
    """Per-step times after each round's warm-up steps."""
    per_round = len(times) // rounds
    return [t for r in range(rounds) for t in times[r * per_round + warmup : (r + 1) * per_round]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trees", type=int, default=2, help="problems per step (T)")
    p.add_argument("--generations", type=int, default=4, help="completions per problem (G = max_nodes)")
    p.add_argument("--tokens", type=int, default=16, help="max_completion_length")
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per round")
    p.add_argument("--rounds", type=int, default=2, help="runs of each trainer, alternating which goes first")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (0: no reference model, TRL's default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    hf_logging.set_verbosity_error()
    model_path = tiny_model_path(
        "qwen2", hidden_size=a.hidden, intermediate_size=2 * a.hidden, num_hidden_layers=a.layers
    )
    dataset, _ = code_task_splits(a.trees * (a.warmup + a.steps), 0, seed=a.seed)
    times: dict[str, list[float]] = {"mars2": [], "grpo": []}
    lengths: dict[str, list[float]] = {"mars2": [], "grpo": []}
    runners = {"mars2": run_mars2, "grpo": run_grpo}
    with Sandbox(SandboxConfig(timeout_s=5.0)) as sandbox, tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name in ("grpo", "mars2") if r % 2 == 0 else ("mars2", "grpo"):
                t, n = runners[name](a, model_path, dataset, sandbox, str(Path(tmp) / f"r{r}"))
                times[name] += t
                lengths[name].append(n)
    timed = {k: summary(v, a.warmup, a.rounds) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in timed.items()}
    median = {k: statistics.median(v) for k, v in timed.items()}
    print(
        f"\nstep time, {a.trees} problems x {a.generations} completions x <= {a.tokens} tokens per step, "
        f"qwen2 hidden={a.hidden} layers={a.layers}, beta={a.beta}, {len(timed['grpo'])} timed steps each "
        f"({a.warmup} warm-up per round, {a.rounds} round(s))"
    )
    print(f"{'':28}{'MARS² (degenerate)':>20}{'GRPOTrainer':>14}{'ratio':>9}")
    for label, stats in (("mean step (s)", mean), ("median step (s)", median)):
        row = f"{stats['mars2']:>20.3f}{stats['grpo']:>14.3f}{stats['mars2'] / stats['grpo']:>9.3f}"
        print(f"{label:28}{row}")
    best = {k: min(v) for k, v in timed.items()}
    print(f"{'fastest step (s)':28}{best['mars2']:>20.3f}{best['grpo']:>14.3f}{best['mars2'] / best['grpo']:>9.3f}")
    tokens = {k: statistics.fmean(v) for k, v in lengths.items()}
    print(f"{'mean completion length':28}{tokens['mars2']:>20.1f}{tokens['grpo']:>14.1f}")
    print("all timed steps (s): " + "; ".join(f"{k}: " + " ".join(f"{t:.3f}" for t in v) for k, v in timed.items()))
    print(
        json.dumps(
            {
                "ratio": round(median["mars2"] / median["grpo"], 4),
                "ratio_mean": round(mean["mars2"] / mean["grpo"], 4),
                "mars2_step_s": round(median["mars2"], 4),
                "grpo_step_s": round(median["grpo"], 4),
                "steps": len(timed["grpo"]),
                "trees": a.trees,
                "generations": a.generations,
                "tokens": a.tokens,
            }
        )
    )


if __name__ == "__main__":
    main()
