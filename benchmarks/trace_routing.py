"""TRACE efficiency table: queries/s, Recall@K and reasoning rate for direct vs always-CoT vs routed inference.

    python benchmarks/trace_routing.py                        # trains the tiny model first (~1.5 min on 2 CPU cores)
    python benchmarks/trace_routing.py --model outputs/trace-tiny   # a saved model: evaluation only (seconds)

Prints a table, then one JSON line ``{"modes": {mode: {...}}, "device": ..., "num_queries": ...}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from datasets import Dataset

from trl_mars.embed.encoder import TraceEncoder
from trl_mars.embed.evaluation import evaluate_retrieval, format_table
from trl_mars.embed.movielens_task import build_movielens_retrieval_task
from trl_mars.embed.tiny import TINY_TRACE_ARGS, tiny_movielens_model_path
from trl_mars.trainers.trace_config import TraceConfig
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer

KEYS = (
    "queries_per_second",
    "recall@10",
    "ndcg@10",
    "reasoning_rate",
    "reasoning_rate_complex",
    "reasoning_rate_simple",
)


def quick_train(task, epochs: float, output_dir: str) -> TraceEncoder:
    args = TraceConfig(
        **TINY_TRACE_ARGS,
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    dataset = Dataset.from_list(task.train_rows())
    trainer = TraceEmbedTrainer(tiny_movielens_model_path(), args=args, train_dataset=dataset)
    trainer.train()
    return trainer.encoder()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved TRACE model (default: train the tiny one briefly)")
    parser.add_argument("--num_movies", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=8.0)
    parser.add_argument("--batch_size", type=int, default=32)
    cli = parser.parse_args()

    task = build_movielens_retrieval_task(num_movies=cli.num_movies, seed=0)
    if cli.model:
        encoder = TraceEncoder.from_pretrained(cli.model)
    else:
        encoder = quick_train(task, cli.epochs, tempfile.mkdtemp(prefix="trace-bench-"))
    if torch.cuda.is_available():
        encoder.model.cuda()
    results = evaluate_retrieval(
        encoder,
        [q.text for q in task.eval],
        task.corpus,
        task.relevant_indices(task.eval),
        is_complex=[q.complex for q in task.eval],
        batch_size=cli.batch_size,
    )
    print(format_table(results, KEYS))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(json.dumps({"modes": results, "device": device, "num_queries": len(task.eval), "corpus": len(task.corpus)}))


if __name__ == "__main__":
    main()
