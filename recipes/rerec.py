"""ReRec: GRPO with dual-graph rewards, reasoning-aware advantages and an online curriculum on MovieLens tasks.

Tiny CPU demo (default config recipes/configs/rerec.yaml: builds a movie-vocabulary tiny model, SFT warm-up on
templated reasoning from a position-biased teacher, then ReRec; prints accuracy / NDCG@K on held-out queries
before the warm-up, before RL and after RL, and the logged training reward):

    accelerate launch --config_file recipes/accelerate_configs/single_cpu.yaml recipes/rerec.py

Qwen2.5-7B-Instruct with vLLM (colocate) on 8 GPUs, LoRA optional (--use_peft --lora_r 64):

    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml recipes/rerec.py \
        --config recipes/configs/rerec_qwen2.5_7b.yaml

Resume the newest complete checkpoint: add --resume_from_checkpoint true. Your own MovieLens release:
--movielens_path /path/to/ml-1m-csv. A prepared ReRec dataset (prompt + ground_truth columns, e.g. RecBench+
records converted with trl_mars.rec.recbench_dataset): --dataset_name /path/or/hub-id, with its own graphs for
the QAS/PAS rewards: --item_attributes_path items.csv (header item,attribute) and --interactions_path
interactions.csv (header user,item[,rating]); without them the MovieLens graphs are used, and the trainer stops
with an error if a weighted graph reward knows none of the dataset's items.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, get_peft_config

from trl_mars.data.movielens import load_movielens
from trl_mars.data.movielens_download import find_movielens
from trl_mars.rec import ItemAttributeGraph, ItemEmbeddings, UserItemGraph, build_rerec_dataset, train_lightgcn
from trl_mars.rec.evaluation import evaluate_recommender
from trl_mars.rec.tasks import DEFAULT_SYSTEM_PROMPT, most_rated_titles, templated_reasoning, with_short_titles
from trl_mars.testing import build_tiny_tokenizer, save_tiny_model
from trl_mars.trainers.rerec_config import ReRecConfig
from trl_mars.trainers.rerec_trainer import ReasoningRecTrainer
from trl_mars.utils.recipes import TINY_MODEL_IDS, parse_recipe_args

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rerec.yaml"


@dataclass
class ReRecScriptArguments(ScriptArguments):
    movielens_path: str | None = field(
        default=None,
        metadata={"help": "MovieLens CSV folder (default: $TRL_MARS_DATA/movielens, else downloaded to the cache)."},
    )
    num_items: int | None = field(default=None, metadata={"help": "Build tasks from the N most-rated movies only."})
    num_train_queries: int = field(default=2000, metadata={"help": "Training queries built from MovieLens."})
    num_eval_queries: int = field(default=200, metadata={"help": "Held-out queries for the before/after evaluation."})
    num_candidates: int = field(default=20, metadata={"help": "Candidates per query (1 positive + N-1 negatives)."})
    num_attributes: int = field(default=2, metadata={"help": "Attributes per condition-based query."})
    query_types: list[str] = field(default_factory=lambda: ["attribute", "interest"])
    attribute_kinds: list[str] = field(default_factory=lambda: ["genre", "tag", "decade"])
    show_attributes: bool = field(default=False, metadata={"help": "List candidate attributes in the prompt."})
    short_titles: bool = field(default=False, metadata={"help": "Titles without year, article first (fewer tokens)."})
    system_prompt: bool = field(default=True, metadata={"help": "Prepend the ReRec system prompt."})
    item_attributes_path: str | None = field(
        default=None, metadata={"help": "With --dataset_name: CSV/TSV of item,attribute edges (QAS graph)."}
    )
    interactions_path: str | None = field(
        default=None, metadata={"help": "With --dataset_name: CSV/TSV of user,item[,rating] (PAS / LightGCN graph)."}
    )
    min_rating: float = field(default=3.5, metadata={"help": "Interactions rated below this are not edges."})
    lightgcn_epochs: int = field(default=20, metadata={"help": "LightGCN epochs for the PAS embeddings."})
    lightgcn_dim: int = field(default=64, metadata={"help": "LightGCN embedding size."})
    sft_warmup_steps: int = field(default=0, metadata={"help": "SFT steps on templated reasoning before RL."})
    sft_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of the SFT warm-up."})
    sft_error_rate: float = field(
        default=0.0, metadata={"help": "Share of warm-up answers that box the first candidate (position bias)."}
    )
    tiny_hidden_size: int = field(default=128, metadata={"help": "Hidden size of the tiny model (trl-mars/tiny-*)."})
    tiny_num_layers: int = field(default=2, metadata={"help": "Layers of the tiny model (trl-mars/tiny-*)."})
    eval_max_new_tokens: int = field(default=256, metadata={"help": "Generation budget of the evaluation."})
    eval_num_samples: int = field(default=0, metadata={"help": "Also evaluate N samples per query (0: greedy only)."})


def needs_movielens(script_args: ReRecScriptArguments) -> bool:
    """MovieLens builds both graphs unless the user gives their own item attributes and interactions."""
    return not (script_args.item_attributes_path and script_args.interactions_path)


def build_data(script_args: ReRecScriptArguments, seed: int):
    """Item-attribute graph, LightGCN item embeddings and (train, eval) datasets."""
    own_graphs = script_args.item_attributes_path or script_args.interactions_path
    if own_graphs and not script_args.dataset_name:
        raise ValueError("item_attributes_path/interactions_path describe --dataset_name's items; set dataset_name")
    movielens = (
        load_movielens(find_movielens(script_args.movielens_path, download=True))
        if needs_movielens(script_args)
        else None
    )
    if script_args.item_attributes_path:
        graph = ItemAttributeGraph.from_file(script_args.item_attributes_path)
    else:
        graph = ItemAttributeGraph.from_movielens(movielens)
    if script_args.interactions_path:
        interactions = UserItemGraph.from_file(script_args.interactions_path, script_args.min_rating)
    else:
        interactions = UserItemGraph.from_movielens(movielens, script_args.min_rating)
    embeddings: ItemEmbeddings = train_lightgcn(
        interactions, dim=script_args.lightgcn_dim, epochs=script_args.lightgcn_epochs, seed=seed
    )[0]
    if script_args.dataset_name:
        data = load_dataset(script_args.dataset_name, script_args.dataset_config)
        return graph, embeddings, data[script_args.dataset_train_split], data[script_args.dataset_test_split]
    task_graph = graph.subset(most_rated_titles(movielens, script_args.num_items)) if script_args.num_items else graph
    if script_args.short_titles:
        task_graph = with_short_titles(task_graph)
    tasks = build_rerec_dataset(
        movielens,
        task_graph,
        num_queries=script_args.num_train_queries + script_args.num_eval_queries,
        query_types=script_args.query_types,
        num_candidates=script_args.num_candidates,
        num_attributes=script_args.num_attributes,
        attribute_kinds=script_args.attribute_kinds,
        show_attributes=script_args.show_attributes,
        system_prompt=DEFAULT_SYSTEM_PROMPT if script_args.system_prompt else None,
        seed=seed,
    )
    split = tasks.train_test_split(test_size=script_args.num_eval_queries, seed=seed)
    return task_graph, embeddings, split["train"], split["test"]


def build_tiny_model(arch: str, train_dataset, graph, script_args: ReRecScriptArguments, path: Path) -> str:
    """A tiny model whose tokenizer is trained on the task text (prompts and reference reasoning)."""
    corpus = [m["content"] for row in train_dataset for m in row["prompt"]]
    corpus += [templated_reasoning(row, graph) for row in train_dataset]
    tokenizer = build_tiny_tokenizer(corpus=corpus)
    overrides = dict(hidden_size=script_args.tiny_hidden_size, intermediate_size=2 * script_args.tiny_hidden_size)
    save_tiny_model(arch, path, tokenizer=tokenizer, num_hidden_layers=script_args.tiny_num_layers, **overrides)
    return str(path)


def warmup_answer(row: dict, graph, error_rate: float, rng: random.Random) -> str:
    """Templated reasoning and its boxed answer; with probability ``error_rate`` the answer is the first listed
    candidate instead: an imperfect teacher with the position bias of LLM rankers (Hou et al., 2024)."""
    if rng.random() < error_rate:
        row = {**row, "ground_truth": [row["candidates"][0]]}
    return templated_reasoning(row, graph)


def sft_warmup(model_path: str, train_dataset, graph, script_args, training_args: ReRecConfig, path: Path) -> str:
    """Short supervised warm-up on templated reasoning + boxed answers, so a small model can be rewarded."""
    rng = random.Random(training_args.seed)
    answers = [warmup_answer(row, graph, script_args.sft_error_rate, rng) for row in train_dataset]
    sft_data = Dataset.from_dict(
        {"prompt": train_dataset["prompt"], "completion": [[{"role": "assistant", "content": a}] for a in answers]}
    )
    args = SFTConfig(
        output_dir=str(path),
        max_steps=script_args.sft_warmup_steps,
        learning_rate=script_args.sft_learning_rate,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        lr_scheduler_type="cosine",
        gradient_checkpointing=training_args.gradient_checkpointing,
        logging_steps=max(1, script_args.sft_warmup_steps // 5),
        save_strategy="no",
        report_to="none",
        use_cpu=training_args.use_cpu,
        bf16=training_args.bf16,
        seed=training_args.seed,
    )
    trainer = SFTTrainer(model_path, args=args, train_dataset=sft_data)
    trainer.train()
    trainer.save_model(str(path))
    return str(path)


def report(name: str, model_path_or_model, tokenizer, eval_dataset, script_args, training_args: ReRecConfig) -> None:
    """Print greedy and (``eval_num_samples`` > 0) sampled accuracy / NDCG@K / format rate on held-out queries;
    sampled at the training temperature, the mean is what the training reward measures."""
    model = model_path_or_model
    if isinstance(model, str):
        model = AutoModelForCausalLM.from_pretrained(model)
    k, budget = training_args.ndcg_k, script_args.eval_max_new_tokens
    modes = {"greedy": {}}
    if script_args.eval_num_samples:
        sampled = dict(temperature=training_args.temperature, num_samples=script_args.eval_num_samples)
        modes[f"sampled (T={training_args.temperature:g}, {script_args.eval_num_samples} per query)"] = sampled
    for mode, kwargs in modes.items():
        result = evaluate_recommender(model, tokenizer, eval_dataset, k=k, max_new_tokens=budget, **kwargs)
        print(
            f"[rerec eval] {name}, {mode}: accuracy={result.accuracy:.3f} ndcg@{k}={result.ndcg:.3f} "
            f"format={result.format_rate:.3f} (n={result.num_queries})",
            flush=True,
        )


def run(script_args: ReRecScriptArguments, training_args: ReRecConfig, model_args: ModelConfig) -> None:
    graph, embeddings, train_dataset, eval_dataset = build_data(script_args, training_args.seed)
    model_path = model_args.model_name_or_path
    work = Path(training_args.output_dir)
    if model_path in TINY_MODEL_IDS and not Path(model_path).exists():
        model_path = build_tiny_model(TINY_MODEL_IDS[model_path], train_dataset, graph, script_args, work / "base")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if script_args.sft_warmup_steps > 0:
        if PartialState().is_main_process:
            report("before warm-up", model_path, tokenizer, eval_dataset, script_args, training_args)
        model_path = sft_warmup(model_path, train_dataset, graph, script_args, training_args, work / "sft")
    training_args.model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    trainer = ReasoningRecTrainer(
        model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        item_graph=graph,
        item_embeddings=embeddings,
    )
    if trainer.accelerator.is_main_process:
        report("before RL", trainer.model, tokenizer, eval_dataset, script_args, training_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if trainer.accelerator.is_main_process:
        report("after RL", trainer.model, tokenizer, eval_dataset, script_args, training_args)
        rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
        if rewards:
            print(f"[rerec] logged training reward: {' -> '.join(f'{r:.3f}' for r in rewards)}", flush=True)
        for h in trainer.curriculum.history if trainer.curriculum is not None else []:
            print(
                f"[rerec] curriculum epoch {h['epoch']}: {h['queries_seen']} queries seen, mean difficulty "
                f"{h['mean_difficulty']:.3f}, {h['mastered_this_epoch']} newly mastered ({h['mastered_total']} in all), "
                f"next epoch draws from {h['next_epoch_queries']}",
                flush=True,
            )
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name or "movielens")


def main() -> None:
    """``--config FILE`` (default: the tiny config) plus command-line overrides, then ``run``."""
    run(*parse_recipe_args((ReRecScriptArguments, ReRecConfig, ModelConfig), default_config=DEFAULT_CONFIG))


if __name__ == "__main__":
    main()
