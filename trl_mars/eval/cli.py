"""``python -m trl_mars.eval`` / ``trl-mars eval``: score samples (or reference solutions) with pass@k."""

from __future__ import annotations

import argparse
import json

from trl_mars.eval.datasets import humaneval_path
from trl_mars.eval.evaluate import evaluate, format_table, load_samples
from trl_mars.eval.loaders import PARSERS, load_problems
from trl_mars.sandbox import Sandbox, SandboxConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-mars eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("evaluate", help="run samples against a benchmark's tests and report pass@k")
    run.add_argument("--problems", default=str(humaneval_path()), help="local .jsonl[.gz]/.json file or hub id")
    run.add_argument("--format", choices=sorted(PARSERS), help="row format (default: detect per row)")
    run.add_argument("--split", default="test", help="split of a hub dataset")
    run.add_argument("--release-version", help="LiveCodeBench release (release_vN, vN, vA_vB) of a folder/hub id")
    run.add_argument("--start-date", help="keep contests on or after this ISO date (LiveCodeBench)")
    run.add_argument("--end-date", help="keep contests on or before this ISO date (LiveCodeBench)")
    run.add_argument("--samples", help="JSONL of {task_id, completion}; default: the reference solutions")
    run.add_argument("--out", help="per-problem JSONL results")
    run.add_argument("--k", default="1,10,100", help="comma-separated k values")
    run.add_argument("--limit", type=int, help="only the first N problems")
    run.add_argument("--concurrency", type=int, default=SandboxConfig.concurrency)
    run.add_argument("--timeout", type=float, default=SandboxConfig.timeout_s, help="seconds per test")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = load_problems(
        args.problems, args.format, args.split, args.release_version, args.start_date, args.end_date
    )[: args.limit]
    if args.samples:
        samples = load_samples(args.samples)
    else:
        samples = {p.task_id: [p.reference_solution] for p in problems if p.reference_solution}
    ks = [int(k) for k in args.k.split(",")]
    with Sandbox(concurrency=args.concurrency, timeout_s=args.timeout) as sandbox:
        summary = evaluate(problems, samples, sandbox, ks, args.out)
    print(format_table(summary))
    print(json.dumps(summary))
    return 0
