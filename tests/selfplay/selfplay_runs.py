"""Tiny self-play runs per preset, shared by the in-process tests and the torchrun / kill -9 subprocesses.

    python  selfplay_runs.py OUT PRESET MODEL [--kill-at STEP] [--resume CKPT] [--searxng URL]
    torchrun --nproc_per_node 2 selfplay_runs.py OUT PRESET MODEL [...]

Each process writes ``OUT/rank<r>.json``: its method state (tree, memory bank, pool, counters, RNG), a checksum per
LoRA adapter (or of the whole model), which adapters' parameters require grad and sit in the optimizer, and the
logged self-play rows. ``--kill-at N`` SIGKILLs the process right after checkpoint N is written (a crash with no
clean-up). The Challenger's parser and the Solver's scoring answers are scripted (test doubles for a trained model:
a random tiny model writes no parseable question), so the memory bank and the pool fill.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from trl_mars.selfplay.corpus import LocalCorpus, SearxngCorpus  # noqa: E402
from trl_mars.selfplay.questions import ParsedQuestion  # noqa: E402
from trl_mars.trainers.selfplay_config import SelfPlayConfig  # noqa: E402
from trl_mars.trainers.selfplay_trainer import SelfPlayTrainer  # noqa: E402

TITLES = ["Heat", "Casino", "Se7en"]
TINY = dict(
    max_completion_length=8,
    num_generations=2,
    per_device_train_batch_size=4,
    num_solver_samples=3,
    learning_rate=1e-3,
    logging_steps=1,
    report_to="none",
    gradient_checkpointing=False,
    use_cpu=True,
    bf16=False,
    seed=0,
)
PRESETS = {
    # C1 S2 S3 | C4: step 3 reads the pool built at step 2, step 4 the memory bank (MAP) of iteration 1
    "rdiverse": dict(
        preset="rdiverse", skill_encoder="hashing", steps_per_iteration=3, challenger_steps=1, solver_pool_size=2,
        replay_ratio=0.5, max_steps=4,
    ),
    "rzero": dict(preset="rzero", steps_per_iteration=3, challenger_steps=1, solver_pool_size=2, max_steps=4),
    "wist": dict(preset="wist", tree_num_proposals=2, steps_per_iteration=2, max_steps=3),
}  # fmt: skip
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


class ScriptedSelfPlay(SelfPlayTrainer):
    """Test doubles for a trained model, so that every role gets non-zero advantages and the bank and pool fill:
    each Challenger output parses to a templated question about ``TITLES[len(text) % 3]`` (answer 1995); the
    Solver's scoring answers depend on the title (Heat: 3 of 3 right, Casino: 2 of 3, Se7en: 1 of 3); a Solver
    training answer is rewarded 1 when its length is odd."""

    def parse_question(self, text, context):
        return ParsedQuestion(f"In which year was the film {TITLES[len(text) % 3]} released?", "1995")

    def sample_texts(self, messages, n, role, temperature=None, max_new_tokens=None, greedy=False):
        if role != "solver":
            return super().sample_texts(messages, n, role, temperature, max_new_tokens, greedy)
        answers = []
        for m in messages:
            right = 3 - next(i for i, t in enumerate(TITLES) if f" {t} " in m[-1]["content"])
            answers.append([r"\boxed{1995}" if k < right else r"\boxed{1990}" for k in range(n)])
        return answers

    def selfplay_reward(self, prompts, completions, sp_role, sp_ref, **kwargs):
        rewards = super().selfplay_reward(prompts, completions, sp_role, sp_ref, **kwargs)
        if sp_role[0] == "solver":
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return [float(len(t) % 2) for t in texts]
        return rewards


class KillAfterSave(TrainerCallback):
    """SIGKILL this process once checkpoint ``step`` (with its trl-mars state and completion marker) is on disk."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def movie_corpus() -> LocalCorpus:
    from trl_mars.data.movielens import load_movielens
    from trl_mars.selfplay.movielens_corpus import build_movielens_documents

    return LocalCorpus(build_movielens_documents(load_movielens(), max_movies=40))


def build_trainer(out: str | Path, preset: str, model: str, corpus=None, callbacks=None, **overrides):
    args = SelfPlayConfig(output_dir=str(out), save_steps=1, **{**TINY, **PRESETS[preset], **overrides})
    peft = LoraConfig(**LORA) if args.roles == "separate" else None
    if args.task_source == "tree" and corpus is None:
        corpus = movie_corpus()
    return ScriptedSelfPlay(model, args=args, corpus=corpus, peft_config=peft, callbacks=callbacks)


def adapter_checksums(trainer: SelfPlayTrainer) -> dict[str, list[float]]:
    """(sum, abs-sum) of the parameters of each LoRA adapter (``model`` for a model without adapters)."""
    sums: dict[str, list[float]] = {}
    names = list(getattr(trainer.model, "peft_config", {}) or [])
    for name, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters():
        key = next((a for a in names if f".{a}." in name), None) if names else "model"
        if key is not None:
            s = sums.setdefault(key, [0.0, 0.0])
            s[0] += float(p.detach().double().sum())
            s[1] += float(p.detach().double().abs().sum())
    return sums


def trainable_report(trainer: SelfPlayTrainer) -> dict[str, dict[str, int]]:
    """Per adapter: parameters requiring grad, and parameters held by the optimizer."""
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    names = list(getattr(trainer.model, "peft_config", {}) or [])
    report: dict[str, dict[str, int]] = {a: {"requires_grad": 0, "in_optimizer": 0} for a in names}
    for name, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters():
        key = next((a for a in names if f".{a}." in name), None)
        if key is not None:
            report[key]["requires_grad"] += int(p.requires_grad)
            report[key]["in_optimizer"] += int(id(p) in in_opt)
    return report


def report(trainer: SelfPlayTrainer) -> dict:
    rows = [
        {k.removeprefix("selfplay/"): v for k, v in row.items() if k.startswith("selfplay/")} | {"step": row["step"]}
        for row in trainer.state.log_history
        if "selfplay/iteration" in row
    ]
    return {
        "rank": trainer.accelerator.process_index,
        "ddp": isinstance(trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel),
        "world_size": trainer.accelerator.num_processes,
        "state": json.loads(json.dumps(trainer.method_state())),
        "adapters": adapter_checksums(trainer),
        "trainable": trainable_report(trainer),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("model")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume")
    parser.add_argument("--searxng")
    cli = parser.parse_args()
    out = Path(cli.out)
    corpus = SearxngCorpus(cli.searxng, min_words=20) if cli.searxng else None
    overrides = dict(corpus="searxng", corpus_path=cli.searxng, corpus_query_mode="label") if cli.searxng else {}
    callbacks = [KillAfterSave(cli.kill_at)] if cli.kill_at else None
    trainer = build_trainer(out / "run", cli.preset, cli.model, corpus=corpus, callbacks=callbacks, **overrides)
    trainer.train(resume_from_checkpoint=cli.resume)
    data = report(trainer)
    (out / f"rank{data['rank']}.json").write_text(json.dumps(data))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
