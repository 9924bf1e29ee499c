"""Does self-play teach the tiny demos anything? Each preset's tiny config through ``recipes/selfplay.py``, once at its
learning rate and once at learning rate 0 (same seed, same warm-up: any difference is the self-play updates' doing).

    OMP_NUM_THREADS=1 python benchmarks/selfplay_evidence.py [--presets rzero rdiverse wist] [--out DIR]
        [--eval_questions 64] [--eval_corpus_questions 64] [-- extra recipe arguments]

Per run: the Challenger's valid-question rate (mean over Challenger steps, and over their last half), the Solver's
greedy accuracy on held-out MovieLens questions about movies outside the corpus and on questions about the corpus's
own movies (before -> after training), the mean Solver training reward, tree children grown from the policy's own
proposals vs corpus fallbacks (wist), and the MAP penalty from iteration 2 (rdiverse). Runs go one at a time.
Prints a table, then one JSON object (all figures) as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "selfplay.py"
_EVAL_RE = re.compile(r"^(held-out|corpus) (before|after): accuracy=([0-9.]+) boxed=([0-9.]+)", re.MULTILINE)


def run(preset: str, learning_rate: str | None, out: Path, cli: argparse.Namespace) -> dict:
    """One recipe run; its printed evaluations and summary."""
    cmd = [sys.executable, str(RECIPE), "--config", str(ROOT / "recipes" / "configs" / f"{preset}.yaml")]
    cmd += ["--output_dir", str(out), "--eval_questions", str(cli.eval_questions)]
    cmd += ["--eval_corpus_questions", str(cli.eval_corpus_questions), *cli.extra]
    if learning_rate is not None:
        cmd += ["--learning_rate", learning_rate]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{preset} (learning_rate={learning_rate}) failed with exit code {proc.returncode}")
    (out / "stdout.txt").write_text(proc.stdout)
    evals = {f"{name}_{when}": float(acc) for name, when, acc, _ in _EVAL_RE.findall(proc.stdout)}
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("selfplay summary: "))
    summary = json.loads(line.removeprefix("selfplay summary: "))
    return {"preset": preset, "learning_rate": learning_rate or "config", "wall_s": round(wall, 1), **evals, **summary}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def table(rows: list[dict]) -> str:
    head = (
        "| preset | lr | valid rate (all / last half) | held-out acc before -> after | corpus acc before -> after "
        "| Solver reward | tree children: policy / corpus fallback | MAP (iter >= 2) | wall s |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        c = r["counters"]
        tree = f"{c.get('policy_children', 0)} / {c.get('corpus_fallback_children', 0)}" if "tree_nodes" in r else "-"
        lines.append(
            f"| {r['preset']} | {r['learning_rate']} "
            f"| {_fmt(r['challenger_valid_rate'])} / {_fmt(r['challenger_valid_rate_last_half'])} "
            f"| {_fmt(r.get('held-out_before'))} -> {_fmt(r.get('held-out_after'))} "
            f"| {_fmt(r.get('corpus_before'))} -> {_fmt(r.get('corpus_after'))} "
            f"| {_fmt(r['solver_reward'])} | {tree} | {_fmt(r['map_penalty_iter2plus'])} | {r['wall_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["rzero", "rdiverse", "wist"])
    parser.add_argument("--out", default="outputs/selfplay-evidence")
    parser.add_argument("--eval_questions", type=int, default=64)
    parser.add_argument("--eval_corpus_questions", type=int, default=64)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more recipe arguments, for both runs")
    cli = parser.parse_args()
    cli.extra = [a for a in cli.extra if a != "--"]
    rows = []
    for preset in cli.presets:
        for lr in (None, "0"):
            rows.append(run(preset, lr, Path(cli.out) / f"{preset}-lr{lr or 'config'}", cli))
            print(f"done: {preset} learning_rate={lr or 'config'} in {rows[-1]['wall_s']} s", file=sys.stderr)
    print(table(rows))
    print(json.dumps({"runs": rows}))


if __name__ == "__main__":
    main()
