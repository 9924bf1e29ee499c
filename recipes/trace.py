"""TRACE: train a causal LM to reason on complex queries, then compress the reasoning into one <|emb|> token.

Tiny CPU demo (default config recipes/configs/trace.yaml): a MovieLens retrieval task (simple tag/genre queries and
multi-constraint paraphrased queries with a CoT target), a tiny Qwen2 with a movie-vocabulary tokenizer; prints
Recall/MRR/NDCG@K, reasoning rates and queries/s on held-out queries before and after training:

    accelerate launch --config_file recipes/accelerate_configs/single_cpu.yaml recipes/trace.py

Qwen2.5-1.5B-Instruct, LoRA r128/alpha256, lr 2e-4, 1 epoch, cosine (the paper's settings), 8 GPUs:

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/trace.py \
        --config recipes/configs/trace_qwen2.5_1.5b.yaml

Multimodal tiny CPU demo: the synthetic shapes task (PIL scenes of coloured shapes; text->image simple and complex
queries, image->caption, image+edit->image), a tiny Qwen2-VL; prints Recall@10 (M-BEIR's, a hit rate) overall and
per task, and reasoning rates per query kind, before and after training (pair it with --learning_rate 0):

    python recipes/trace.py --config recipes/configs/trace_multimodal.yaml

M-BEIR (TRACE's benchmark) in its released layout (query/, cand_pool/, instructions/, images) at --mbeir_root,
Qwen2-VL-2B-Instruct, LoRA r128/alpha256 on the language model, frozen vision encoder, lr 2e-4, 1 epoch, cosine:

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/trace.py \
        --config recipes/configs/trace_mbeir_qwen2vl.yaml --mbeir_root /data/M-BEIR

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
from trl_mars.embed.mbeir import MBEIR_EVAL_SETS, load_mbeir_eval, load_mbeir_train
from trl_mars.embed.mbeir_cli import headline_keys
from trl_mars.embed.movielens_task import build_movielens_retrieval_task
from trl_mars.embed.shapes_task import build_shapes_retrieval_task
from trl_mars.embed.tiny import (
    TINY_MOVIELENS_MODEL_ID,
    TINY_SHAPES_VLM_ID,
    tiny_movielens_model_path,
    tiny_shapes_vlm_path,
)
from trl_mars.trainers.trace_config import TraceConfig
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer
from trl_mars.utils.recipes import parse_recipe_args, resolve_model_path

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "trace.yaml"
TASKS = ("movielens", "shapes", "mbeir")


@dataclass
class TraceScriptArguments(ScriptArguments):
    task: str = field(
        default="movielens",
        metadata={"help": "Built-in task when no --dataset_name: 'movielens' (text) or 'shapes' (images)."},
    )
    num_scenes: int = field(default=320, metadata={"help": "Shapes task: number of distinct scenes."})
    image_size: int = field(default=56, metadata={"help": "Shapes task: rendered image side in pixels."})
    candidate_modality: str = field(
        default="image", metadata={"help": "Shapes task: scene candidates as 'image' or 'image,text'."}
    )
    mbeir_root: str | None = field(default=None, metadata={"help": "M-BEIR: the dataset folder (query/, ...)."})
    mbeir_image_root: str | None = field(
        default=None, metadata={"help": "M-BEIR: where img_paths resolve (default: --mbeir_root)."}
    )
    mbeir_train_queries: str = field(
        default="query/union_train/mbeir_union_up_train.jsonl",
        metadata={"help": "M-BEIR: training query file, relative to --mbeir_root (add query_target for CoT)."},
    )
    mbeir_train_pool: str = field(
        default="cand_pool/global/mbeir_union_train_cand_pool.jsonl",
        metadata={"help": "M-BEIR: the candidate pool of the training queries, relative to --mbeir_root."},
    )
    mbeir_hard_negatives: int = field(
        default=0, metadata={"help": "M-BEIR: hard negatives per row from neg_cand_list (UniIR and TRACE: 0)."}
    )
    mbeir_eval_sets: list[str] = field(
        default_factory=lambda: ["cirr_task7"],
        metadata={"help": f"M-BEIR: evaluation sets, of {', '.join(MBEIR_EVAL_SETS)}."},
    )
    mbeir_eval_split: str = field(default="test", metadata={"help": "M-BEIR: evaluation split (val or test)."})
    mbeir_pools: list[str] = field(
        default_factory=lambda: ["local"], metadata={"help": "M-BEIR: candidate pools, 'local' and/or 'global'."}
    )
    mbeir_max_eval_queries: int | None = field(
        default=None, metadata={"help": "M-BEIR: evaluate the first N queries of each set (all: None)."}
    )
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
    tiny_hidden_size: int = field(
        default=64, metadata={"help": f"Hidden size of {TINY_MOVIELENS_MODEL_ID} and {TINY_SHAPES_VLM_ID}."}
    )


def report_keys(ks: list[int], tasks: list[str] | None = None) -> tuple[str, ...]:
    """Table columns: recall/MRR/NDCG@K and reasoning rates; with task labels (multimodal sets) M-BEIR's
    Recall@K (``hit@K``) overall and per task, and the reasoning rate per task."""
    k = max(ks)
    rates = ("reasoning_rate_complex", "reasoning_rate_simple")
    if tasks:
        names = list(dict.fromkeys(tasks))
        per_task = [f"hit@{k}/{t}" for t in names] + [f"reasoning_rate/{t}" for t in names]
        return (f"hit@{k}", f"hit@{k}_complex", f"hit@{k}_simple", *per_task, *rates, "queries_per_second")
    return (
        f"recall@{k}",
        f"recall@{k}_complex",
        f"recall@{k}_simple",
        f"mrr@{k}",
        f"ndcg@{k}",
        *rates,
        "queries_per_second",
    )


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
        raise ValueError("corpus_path is for --dataset_name's evaluation; the built-in tasks have their own corpus")
    if script_args.task == "mbeir":
        rows = load_mbeir_train(
            script_args.mbeir_root,
            script_args.mbeir_train_queries,
            script_args.mbeir_train_pool,
            script_args.mbeir_image_root,
            hard_negatives=script_args.mbeir_hard_negatives,
            seed=seed,
        )
        eval_set = load_mbeir_eval(
            script_args.mbeir_root,
            script_args.mbeir_eval_sets,
            script_args.mbeir_eval_split,
            script_args.mbeir_pools,
            script_args.mbeir_image_root,
            max_queries=script_args.mbeir_max_eval_queries,
        )
        return Dataset.from_list(rows), eval_set
    if script_args.task == "shapes":
        shapes = build_shapes_retrieval_task(
            num_scenes=script_args.num_scenes,
            eval_fraction=script_args.eval_fraction,
            size=script_args.image_size,
            candidate_modality=script_args.candidate_modality,
            seed=seed,
        )
        return Dataset.from_list(shapes.train_rows(hard_negative=script_args.hard_negatives)), shapes.eval_set()
    task = build_movielens_retrieval_task(
        path=script_args.movielens_path,
        num_movies=script_args.num_movies,
        eval_fraction=script_args.eval_fraction,
        seed=seed,
    )
    return Dataset.from_list(task.train_rows(hard_negative=script_args.hard_negatives, seed=seed)), task.eval_set()


def report(trainer: TraceEmbedTrainer, data: RetrievalSet, script_args: TraceScriptArguments, name: str) -> dict:
    mbeir = script_args.task == "mbeir" and not script_args.dataset_name
    pools = list(dict.fromkeys(script_args.mbeir_pools)) if mbeir else ["global"]
    results = evaluate_retrieval_set(
        trainer.encoder(), data, ks=script_args.eval_ks, batch_size=script_args.eval_batch_size, pools=pools
    )
    if mbeir:
        keys = headline_keys(script_args.mbeir_eval_sets, pools, sorted(script_args.eval_ks))
    else:
        keys = report_keys(script_args.eval_ks, data.tasks)
    print(f"[trace eval] {name} ({len(data.queries)} held-out queries, corpus {len(data.corpus)})", flush=True)
    print(format_table(results, keys), flush=True)
    return results


def check_script_args(script_args: TraceScriptArguments) -> None:
    """Reject unknown task names and task options before any data or model is loaded."""
    if script_args.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {script_args.task!r}")
    if script_args.candidate_modality not in ("image", "image,text"):
        raise ValueError(f"candidate_modality must be 'image' or 'image,text', got {script_args.candidate_modality!r}")
    if script_args.dataset_name and script_args.task != "movielens":
        raise ValueError(f"task={script_args.task!r} is a built-in task; it cannot be combined with --dataset_name")
    if script_args.task == "mbeir":
        if not script_args.mbeir_root:
            raise ValueError("task='mbeir' needs --mbeir_root (the M-BEIR folder: query/, cand_pool/, ...)")
        unknown = [s for s in script_args.mbeir_eval_sets if s not in MBEIR_EVAL_SETS]
        if unknown:
            raise ValueError(
                f"mbeir_eval_sets {unknown} are not M-BEIR evaluation sets ({', '.join(MBEIR_EVAL_SETS)})"
            )
        bad_pools = [p for p in script_args.mbeir_pools if p not in ("local", "global")]
        if bad_pools or not script_args.mbeir_pools:
            raise ValueError(f"mbeir_pools must be 'local' and/or 'global', got {script_args.mbeir_pools}")
        if script_args.mbeir_eval_split not in ("val", "test"):
            raise ValueError(f"mbeir_eval_split must be 'val' or 'test', got {script_args.mbeir_eval_split!r}")


def tiny_model_for(model_id: str, script_args: TraceScriptArguments) -> str | None:
    """The local path of a tiny model id (built on first use), or None for any other model."""
    size = script_args.tiny_hidden_size
    if model_id == TINY_MOVIELENS_MODEL_ID:
        return tiny_movielens_model_path(hidden_size=size, intermediate_size=2 * size)
    if model_id == TINY_SHAPES_VLM_ID:
        return tiny_shapes_vlm_path(hidden_size=size, intermediate_size=2 * size)
    return None


def run(script_args: TraceScriptArguments, training_args: TraceConfig, model_args: ModelConfig) -> None:
    check_script_args(script_args)
    needs_movielens = not script_args.dataset_name and script_args.task == "movielens"
    if needs_movielens or model_args.model_name_or_path == TINY_MOVIELENS_MODEL_ID:
        script_args.movielens_path = str(find_movielens(script_args.movielens_path, download=True))
    train_dataset, eval_set = load_data(script_args, training_args.seed)
    model_path = tiny_model_for(model_args.model_name_or_path, script_args) or model_args.model_name_or_path
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
    trainer.create_model_card(dataset_name=script_args.dataset_name or script_args.task)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name or script_args.task)


def main() -> None:
    """``--config FILE`` (default: the tiny config) plus command-line overrides, then ``run``."""
    run(*parse_recipe_args((TraceScriptArguments, TraceConfig, ModelConfig), default_config=DEFAULT_CONFIG))


if __name__ == "__main__":
    main()
