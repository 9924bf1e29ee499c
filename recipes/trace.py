"""TRACE: train a causal LM to reason on complex queries, then compress the reasoning into one <|emb|> token.

Tiny CPU demo (default config recipes/configs/trace.yaml): a MovieLens retrieval task (simple tag/genre queries and
multi-constraint paraphrased queries with a CoT target), a tiny Qwen2 with a movie-vocabulary tokenizer; prints
Recall/MRR/NDCG@K, reasoning rates and queries/s on held-out queries before and after training:

    accelerate launch --config_file recipes/accelerate_configs/single_cpu.yaml recipes/trace.py

Qwen2.5-1.5B-Instruct, LoRA r128/alpha256, lr 2e-4, 1 epoch, cosine (the paper's settings), 8 GPUs:

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/trace.py \
        --config recipes/configs/trace_qwen2.5_1.5b.yaml

Resume the newest complete checkpoint: --resume_from_checkpoint true. Your own data in sentence-transformers layout
(query, query_target, positive, negative_*): --dataset_name /path/or/hub-id; its --dataset_test_split (if present)
is evaluated before and after training against --corpus_path (one candidate per line in a .txt, or a file with a
'text' column; default: the split's distinct positives).

The report has one row per inference mode (direct, cot, routed) and a "gold" row: queries embedded with their
gold reasoning (query_target) fed in, i.e. what TRACE gives when the reasoning is right.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, load_dataset
from trl import ModelConfig, ScriptArguments, get_peft_config

from trl_mars.data.movielens_download import find_movielens
from trl_mars.embed.evaluation import RetrievalSet, evaluate_retrieval_set, format_table
from trl_mars.embed.movielens_task import build_movielens_retrieval_task
from trl_mars.embed.tiny import TINY_MOVIELENS_MODEL_ID, tiny_movielens_model_path
from trl_mars.trainers.trace_config import TraceConfig
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer
from trl_mars.utils.recipes import parse_recipe_args, resolve_model_path

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "trace.yaml"


@dataclass
class TraceScriptArguments(ScriptArguments):
    movielens_path: str | None = field(
        default=None,
        metadata={"help": "MovieLens CSV folder (default: $TRL_MARS_DATA/movielens, else downloaded to the cache)."},
    )
    num_movies: int | None = field(
        default=None, metadata={"help": "Build the task from N sampled movies (all: None)."}
    )
    eval_fraction: float = field(default=0.2, metadata={"help": "Share of movies whose queries are held out."})
    hard_negatives: bool = field(default=True, metadata={"help": "Add a 'negative' column (shares a genre)."})
    eval_ks: list[int] = field(default_factory=lambda: [1, 5, 10], metadata={"help": "K of Recall/MRR/NDCG@K."})
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of the before/after evaluation."})
    corpus_path: str | None = field(
        default=None,
        metadata={"help": "Corpus of --dataset_name's evaluation: .txt (one per line) or a 'text' column."},
    )
    tiny_hidden_size: int = field(default=64, metadata={"help": f"Hidden size of {TINY_MOVIELENS_MODEL_ID}."})


def report_keys(ks: list[int]) -> tuple[str, ...]:
    k = max(ks)
    rates = ("reasoning_rate_complex", "reasoning_rate_simple", "queries_per_second")
    return (f"recall@{k}", f"recall@{k}_complex", f"recall@{k}_simple", f"mrr@{k}", f"ndcg@{k}", *rates)


def load_corpus(path: str) -> list[str]:
    """Candidate texts: the non-empty lines of a .txt file, or the 'text' column of a file ``datasets`` reads."""
    if path.endswith(".txt"):
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(Path(path).suffix)
    if builder is None:
        raise ValueError(f"corpus_path {path!r}: expected a .txt, .jsonl, .json, .csv or .parquet file")
    data = load_dataset(builder, data_files=path, split="train")
    if "text" not in data.column_names:
        raise ValueError(f"corpus_path {path!r} has no 'text' column (columns: {data.column_names})")
    return list(data["text"])


def load_data(script_args: TraceScriptArguments, seed: int) -> tuple[Dataset, RetrievalSet | None]:
    if script_args.dataset_name:
        data = load_dataset(script_args.dataset_name, script_args.dataset_config)
        corpus = load_corpus(script_args.corpus_path) if script_args.corpus_path else None
        test = data.get(script_args.dataset_test_split)
        if test is None and corpus is not None:
            raise ValueError(
                f"corpus_path is set but {script_args.dataset_name} has no split {script_args.dataset_test_split!r}"
            )
        eval_set = None if test is None else RetrievalSet.from_dataset(test, corpus, script_args.dataset_test_split)
        return data[script_args.dataset_train_split], eval_set
    if script_args.corpus_path:
        raise ValueError("corpus_path is for --dataset_name's evaluation; the MovieLens task has its own corpus")
    task = build_movielens_retrieval_task(
        path=script_args.movielens_path,
        num_movies=script_args.num_movies,
        eval_fraction=script_args.eval_fraction,
        seed=seed,
    )
    return Dataset.from_list(task.train_rows(hard_negative=script_args.hard_negatives, seed=seed)), task.eval_set()


def report(trainer: TraceEmbedTrainer, data: RetrievalSet, script_args: TraceScriptArguments, name: str) -> dict:
    results = evaluate_retrieval_set(
        trainer.encoder(), data, ks=script_args.eval_ks, batch_size=script_args.eval_batch_size
    )
    print(f"[trace eval] {name} ({len(data.queries)} held-out queries, corpus {len(data.corpus)})", flush=True)
    print(format_table(results, report_keys(script_args.eval_ks)), flush=True)
    return results


def run(script_args: TraceScriptArguments, training_args: TraceConfig, model_args: ModelConfig) -> None:
    if not script_args.dataset_name or model_args.model_name_or_path == TINY_MOVIELENS_MODEL_ID:
        script_args.movielens_path = str(find_movielens(script_args.movielens_path, download=True))
    train_dataset, eval_set = load_data(script_args, training_args.seed)
    model_path = model_args.model_name_or_path
    if model_path == TINY_MOVIELENS_MODEL_ID:
        size = script_args.tiny_hidden_size
        model_path = tiny_movielens_model_path(hidden_size=size, intermediate_size=2 * size)
    training_args.model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    trainer = TraceEmbedTrainer(
        resolve_model_path(model_path),
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
    )
    main_process = trainer.accelerator.is_main_process
    before = report(trainer, eval_set, script_args, "before training") if eval_set and main_process else None
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if eval_set and main_process:
        after = report(trainer, eval_set, script_args, "after training")
        out = Path(training_args.output_dir, "retrieval_eval.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"before": before, "after": after}, indent=2))
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset_name or "movielens")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name or "movielens")


def main() -> None:
    """``--config FILE`` (default: the tiny config) plus command-line overrides, then ``run``."""
    run(*parse_recipe_args((TraceScriptArguments, TraceConfig, ModelConfig), default_config=DEFAULT_CONFIG))


if __name__ == "__main__":
    main()
