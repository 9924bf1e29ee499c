"""Challenger-Solver self-play (R-Zero, R-Diverse, WIST) with ``SelfPlayTrainer``.

Tiny CPU demos (a tiny Qwen2, a few steps; WIST grows a domain tree over a MovieLens corpus):

    accelerate launch --config_file recipes/accelerate_configs/single_cpu.yaml recipes/selfplay.py \
        --config recipes/configs/wist.yaml
    accelerate launch --config_file recipes/accelerate_configs/single_cpu.yaml recipes/selfplay.py \
        --config recipes/configs/rzero.yaml
    accelerate launch --config_file recipes/accelerate_configs/single_cpu.yaml recipes/selfplay.py \
        --config recipes/configs/rdiverse.yaml

``--sft_warmup_steps N`` first fits the tiny model (re-initialised with a tokenizer fitted to the self-play text) on
scripted MovieLens questions/answers so that it emits parseable questions most of the time; the three tiny configs
set it. ``--eval_questions N`` / ``--eval_corpus_questions N`` ask held-out / corpus questions before and after
training; the last line is a ``selfplay summary`` JSON (valid-question rate, Solver reward, MAP, tree children).
``benchmarks/selfplay_evidence.py`` pairs each tiny config with the same run at learning rate 0. Real models (Qwen3-4B-Base, 8 GPUs, vLLM colocate; LoRA adapters for the two roles):

    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero2.yaml recipes/selfplay.py \
        --config recipes/configs/wist_qwen3.yaml
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/selfplay.py \
        --config recipes/configs/rdiverse_qwen3.yaml

Resume the newest complete checkpoint: --resume_from_checkpoint true. The domain tree is dumped as
``domain_tree.json``/``domain_tree.html`` in every checkpoint and in ``output_dir``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from trl import ModelConfig, ScriptArguments, get_peft_config

from trl_mars.data.movielens import load_movielens
from trl_mars.data.movielens_download import find_movielens
from trl_mars.selfplay.evaluation import load_qa_dataset, movielens_heldout
from trl_mars.selfplay.movielens_corpus import build_movielens_documents
from trl_mars.selfplay.warmup import tiny_model_for_warmup, warmup_examples
from trl_mars.trainers.selfplay_config import SelfPlayConfig
from trl_mars.trainers.selfplay_trainer import SelfPlayTrainer
from trl_mars.utils.recipes import TINY_MODEL_IDS, parse_recipe_args, resolve_model_path
from trl_mars.utils.warmup import sft_warmup

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "wist.yaml"


@dataclass
class SelfPlayScriptArguments(ScriptArguments):
    sft_warmup_steps: int = field(default=0, metadata={"help": "Scripted SFT warm-up steps before self-play (tiny)."})
    sft_warmup_learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the warm-up."})
    eval_questions: int = field(
        default=0, metadata={"help": "Held-out questions asked before and after training (0: no evaluation)."}
    )
    eval_corpus_questions: int = field(
        default=0,
        metadata={
            "help": "Questions about the corpus's own MovieLens movies (facts its documents state), asked before and "
            "after training (0: none)."
        },
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "Hub dataset or local file of held-out QA (default: MovieLens movies outside the corpus)."},
    )
    eval_split: str = field(default="test", metadata={"help": "Split of eval_dataset."})
    eval_question_column: str = field(default="question", metadata={"help": "Question column of eval_dataset."})
    eval_answer_column: str = field(default="answer", metadata={"help": "Gold-answer column of eval_dataset."})
    eval_samples: int = field(
        default=1, metadata={"help": "Solver samples per held-out question (> 1 needs --eval_greedy false)."}
    )
    eval_greedy: bool = field(default=True, metadata={"help": "Greedy held-out answers (else sampled)."})


def warm_up(model_path: str, script_args: SelfPlayScriptArguments, args: SelfPlayConfig, model_args) -> str:
    """SFT warm-up on scripted MovieLens chats; the folder of the warmed-up model.

    Under ``torchrun`` the main process alone writes the re-initialised tiny base, the SFT runs data-parallel on all
    processes, and every process waits for the saved model before reading it."""
    state = PartialState()
    movielens = load_movielens(args.corpus_path if args.corpus == "movielens" else None)
    docs = build_movielens_documents(movielens, max_movies=args.corpus_max_documents)
    chats = warmup_examples(docs, args.task_source, n=20 * script_args.sft_warmup_steps, seed=args.seed)
    if model_args.model_name_or_path in TINY_MODEL_IDS and not Path(model_args.model_name_or_path).exists():
        # the random tiny model, with a tokenizer fitted to the self-play text (see tiny_model_for_warmup)
        base = Path(args.output_dir) / "warmup-base"
        if state.is_main_process:
            tiny_model_for_warmup(TINY_MODEL_IDS[model_args.model_name_or_path], chats, base, seed=args.seed)
        state.wait_for_everyone()
        model_path = str(base)
    model_path = sft_warmup(
        model_path,
        chats,
        Path(args.output_dir) / "warmup",
        max_steps=script_args.sft_warmup_steps,
        learning_rate=script_args.sft_warmup_learning_rate,
        seed=args.seed,
        use_cpu=args.use_cpu,
    )
    state.wait_for_everyone()  # the main process has saved the model
    return model_path


def heldout_questions(script_args: SelfPlayScriptArguments, args: SelfPlayConfig) -> list[tuple[str, str]]:
    """``eval_questions`` held-out (question, answer) pairs: from ``eval_dataset``, else MovieLens movies ranked
    after the corpus's ``corpus_max_documents`` (150 when unset) most-rated ones."""
    if script_args.eval_questions <= 0:
        return []
    if script_args.eval_dataset:
        return load_qa_dataset(
            script_args.eval_dataset,
            script_args.eval_split,
            script_args.eval_question_column,
            script_args.eval_answer_column,
            limit=script_args.eval_questions,
        )
    movielens = args.corpus_path if args.corpus == "movielens" else None
    return movielens_heldout(script_args.eval_questions, skip=args.corpus_max_documents or 150, path=movielens)


def corpus_questions(script_args: SelfPlayScriptArguments, args: SelfPlayConfig) -> list[tuple[str, str]]:
    """``eval_corpus_questions`` (question, answer) pairs about the corpus's most-rated MovieLens movies: facts the
    Challenger's documents state (and the warm-up's Solver answers cover), so self-play on the corpus can teach them."""
    n = script_args.eval_corpus_questions
    if n <= 0:
        return []
    if args.corpus != "movielens":
        raise ValueError(f"eval_corpus_questions needs corpus=movielens, got corpus={args.corpus!r}")
    if args.corpus_max_documents is not None and n > args.corpus_max_documents:
        raise ValueError(
            f"eval_corpus_questions={n} exceeds corpus_max_documents={args.corpus_max_documents} (one per movie)"
        )
    return movielens_heldout(n, skip=0, path=args.corpus_path)


def report_heldout(when: str, trainer: SelfPlayTrainer, name: str, qa: list, script_args) -> None:
    result = trainer.evaluate_heldout(qa, script_args.eval_samples, greedy=script_args.eval_greedy)
    if trainer.accelerator.is_main_process:
        print(
            f"{name} {when}: accuracy={result.accuracy:.4f} boxed={result.boxed_rate:.4f} "
            f"(questions={result.num_questions}, samples={result.num_samples})",
            flush=True,
        )


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summary(trainer: SelfPlayTrainer) -> dict:
    """Run-level self-play figures from the log history and counters: mean Challenger valid-question rate over all
    sampled candidates (all Challenger steps, and the last half), Solver reward, MAP penalty from iteration 2, tree children from the
    policy's proposals vs corpus fallbacks."""
    rows = [r for r in trainer.state.log_history if "selfplay/iteration" in r]
    key = "selfplay/challenger_candidates_valid_frac"  # all sampled candidates, before WIST's subsampling
    key = key if any(key in r for r in rows) else "selfplay/challenger_valid_frac"
    valid = [r[key] for r in rows if key in r]
    out = {
        "challenger_valid_rate": _mean(valid),
        "challenger_valid_rate_last_half": _mean(valid[len(valid) // 2 :]),
        "solver_reward": _mean([r["selfplay/solver_reward"] for r in rows if "selfplay/solver_reward" in r]),
        "map_penalty_iter2plus": _mean(
            [r["selfplay/map_penalty"] for r in rows if "selfplay/map_penalty" in r and r["selfplay/iteration"] >= 2]
        ),
        "memory_size": len(trainer.memory),
        "counters": dict(sorted(trainer.counters.items())),
    }
    if trainer.tree is not None:
        out["tree_nodes"] = len(trainer.tree.nodes)
    return out


def main() -> None:
    script_args, args, model_args = parse_recipe_args(
        (SelfPlayScriptArguments, SelfPlayConfig, ModelConfig), default_config=DEFAULT_CONFIG
    )
    if args.corpus == "movielens":  # found locally, else downloaded on first use
        args.corpus_path = str(find_movielens(args.corpus_path, download=True))
    model_path = resolve_model_path(model_args.model_name_or_path)
    args.model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    if script_args.sft_warmup_steps > 0:
        model_path = warm_up(model_path, script_args, args, model_args)
    trainer = SelfPlayTrainer(model_path, args=args, peft_config=get_peft_config(model_args))
    evaluations = {"held-out": heldout_questions(script_args, args), "corpus": corpus_questions(script_args, args)}
    evaluations = {name: qa for name, qa in evaluations.items() if qa}
    for name, qa in evaluations.items():
        report_heldout("before", trainer, name, qa, script_args)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    for name, qa in evaluations.items():
        report_heldout("after", trainer, name, qa, script_args)
    if trainer.accelerator.is_main_process:
        for row in trainer.state.log_history:
            selfplay = {k.removeprefix("selfplay/"): round(v, 4) for k, v in row.items() if k.startswith("selfplay/")}
            if selfplay:
                print(f"step {row['step']}: {selfplay}")
        print(f"selfplay summary: {json.dumps(summary(trainer))}", flush=True)
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if torch.distributed.is_initialized():  # a clean exit under torchrun (no gloo abort at interpreter shutdown)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
