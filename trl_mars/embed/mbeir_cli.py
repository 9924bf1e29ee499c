"""``python -m trl_mars.embed.mbeir_cli``: evaluate a saved TRACE model on M-BEIR files (local and/or global pool).

    python -m trl_mars.embed.mbeir_cli --model outputs/trace --root /data/M-BEIR \\
        --eval_sets cirr_task7 mscoco_task0 --pools local global --modes direct routed --ks 1 5 10

Every M-BEIR file is read and checked (``load_mbeir_eval``) before the model loads. Prints, per mode, M-BEIR's
Recall@K (``hit@K``) overall and each set's headline (R@5; R@10 for Fashion200K and FashionIQ) with its reasoning
rate and the queries/s; ``--output_json`` writes every metric.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from trl_mars.argtypes import HelpFormatter, ks, positive_int
from trl_mars.embed.evaluation import evaluate_retrieval_set, format_table
from trl_mars.embed.mbeir import HEADLINE_K, MBEIR_EVAL_SETS, load_mbeir_eval


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trl_mars.embed.mbeir_cli", description=__doc__.split("\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--model", required=True, help="a folder saved by TraceEmbedTrainer (or its export)")
    parser.add_argument("--root", required=True, type=Path, help="the M-BEIR folder (query/, cand_pool/, ...)")
    parser.add_argument("--image_root", type=Path, default=None, help="where img_paths resolve (default: --root)")
    parser.add_argument("--eval_sets", nargs="+", default=["cirr_task7"], choices=MBEIR_EVAL_SETS)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--pools", nargs="+", default=["local"], choices=("local", "global"))
    parser.add_argument("--modes", nargs="+", default=["direct", "cot", "routed"], choices=("direct", "cot", "routed"))
    parser.add_argument("--ks", nargs="+", type=ks, default=[[1, 5, 10]], help="Recall@K cut-offs")
    parser.add_argument("--batch_size", type=positive_int, default=32)
    parser.add_argument("--max_queries", type=positive_int, default=None, help="the first N queries of each set")
    parser.add_argument("--output_json", type=Path, default=None, help="write every metric here")
    return parser


def headline_keys(eval_sets: Sequence[str], pools: Sequence[str], cutoffs: Sequence[int]) -> list[str]:
    """Overall hit@K per pool, then per set its headline hit@K (when evaluated) and reasoning rate."""
    keys = []
    for pool in pools:
        prefix = "local/" if pool == "local" else ""
        keys += [f"{prefix}hit@{k}" for k in cutoffs]
        for name in eval_sets:
            k = HEADLINE_K.get(name.rpartition("_task")[0], 5)
            if k in cutoffs:
                keys.append(f"{prefix}hit@{k}/{name}")
    return [*keys, *(f"reasoning_rate/{name}" for name in eval_sets), "queries_per_second"]


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    args = build_parser().parse_args(argv)
    cutoffs = sorted({k for group in args.ks for k in group})
    pools = list(dict.fromkeys(args.pools))
    data = load_mbeir_eval(
        args.root, args.eval_sets, args.split, pools, args.image_root, max_queries=args.max_queries
    )  # every file checked before the model loads
    from trl_mars.embed.encoder import TraceEncoder

    encoder = TraceEncoder.from_pretrained(args.model)
    results = evaluate_retrieval_set(
        encoder, data, modes=args.modes, ks=cutoffs, pools=pools, batch_size=args.batch_size
    )
    print(f"[mbeir] {len(data.queries)} queries of {', '.join(args.eval_sets)}; corpus {len(data.corpus)}")
    print(format_table(results, headline_keys(args.eval_sets, pools, cutoffs)))
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
