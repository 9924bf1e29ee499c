"""Checks/second of the fork-server sandbox vs a naive runner (one fresh ``python`` per check, as in the
original human-eval harness), on the HumanEval canonical solutions, with identical verdicts confirmed.

    python benchmarks/sandbox.py [--concurrency 2] [--repeats 3] [--limit N]

The last line printed is one JSON object with the speedup and both throughputs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trl_mars.eval.datasets import humaneval_source
from trl_mars.eval.rows import read_rows
from trl_mars.sandbox import Sandbox


def naive_check(row: dict, workdir: Path, timeout: float) -> bool:
    """human-eval style: program + test code + ``check(entry_point)`` in one fresh interpreter."""
    source = f"{row['prompt']}{row['canonical_solution']}\n{row['test']}\ncheck({row['entry_point']})\n"
    path = workdir / f"{row['task_id'].replace('/', '_')}.py"
    path.write_text(source)
    try:
        return (
            subprocess.run([sys.executable, str(path)], cwd=workdir, capture_output=True, timeout=timeout).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


def timed(fn) -> tuple[list[bool], float]:
    start = time.perf_counter()
    verdicts = fn()
    return verdicts, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=humaneval_source(), help="a local HumanEval .jsonl.gz")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the problems for our sandbox")
    parser.add_argument("--limit", type=int, help="only the first N problems")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    rows = [row for _, row in read_rows(args.data)][: args.limit]
    checks = [(r["prompt"] + r["canonical_solution"], r["test"], r["entry_point"]) for r in rows]

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.concurrency) as pool:
        naive, naive_s = timed(lambda: list(pool.map(lambda r: naive_check(r, Path(tmp), args.timeout), rows)))
    with Sandbox(concurrency=args.concurrency, timeout_s=args.timeout) as sandbox:
        isolation = sandbox.start()
        ours_runs = [timed(lambda: sandbox.run_batch(checks)) for _ in range(args.repeats)]
    ours_s = sum(s for _, s in ours_runs) / len(ours_runs)
    ours = [r.passed for r in ours_runs[0][0]]
    mismatches = {
        (rows[i]["task_id"], r.feedback_text(1, 300))
        for results, _ in ours_runs
        for i, r in enumerate(results)
        if r.passed != naive[i]
    }
    identical = not mismatches

    n = len(rows)
    table = [
        ("runner", "checks", "seconds", "checks/s", "passed"),
        ("naive (fresh python per check)", n, f"{naive_s:.2f}", f"{n / naive_s:.1f}", sum(naive)),
        ("trl_mars.sandbox (fork server)", n, f"{ours_s:.2f}", f"{n / ours_s:.1f}", sum(ours)),
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
    print(f"concurrency={args.concurrency}  repeats(ours)={args.repeats}  isolation={isolation}")
    print(f"identical verdicts: {identical}")
    for task_id, feedback in sorted(mismatches):
        print(f"  mismatch {task_id}: {feedback}")
    summary = {
        "speedup": round(naive_s / ours_s, 2),
        "ours_checks_per_s": round(n / ours_s, 1),
        "naive_checks_per_s": round(n / naive_s, 1),
        "identical_verdicts": identical,
        "checks": n,
        "concurrency": args.concurrency,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
