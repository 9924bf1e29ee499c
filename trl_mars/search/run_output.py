"""The output folder of ``trl-mars search``, written as problems finish so that ``--resume`` loses nothing.

Layout: ``run.json`` (the settings that decide the results), ``results.jsonl`` (a line per finished tree,
appended and fsynced as each group of problems finishes), ``trees/<tree id>.json`` (each finished tree, written
before its line), then at the end ``trees.json``, ``trees.html`` and ``summary.json``, all rebuilt from the
finished trees. A tree counts as finished when its line and its tree file are both there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from trl_mars.search.tree import SearchTree
from trl_mars.utils.checkpoint import atomic_write_json

RESULTS = "results.jsonl"
RUN_FILE = "run.json"
TREES_DIR = "trees"
FINAL_FILES = ("trees.json", "trees.html", "summary.json")


def tree_path(out: Path, tree_id: str) -> Path:
    """``out/trees/<tree id with every character outside [A-Za-z0-9._-] replaced by _>.json``."""
    return out / TREES_DIR / (re.sub(r"[^A-Za-z0-9._-]", "_", tree_id) + ".json")


class RunOutput:
    """Finished trees of a search run in ``out``; ``resume=True`` keeps those of an earlier run with the same
    ``settings`` (a different setting is an error naming it), otherwise the folder's earlier results are cleared.
    ``defaults``: the values of settings added since older runs were written, which their ``run.json`` lacks."""

    def __init__(
        self, out: str | os.PathLike, settings: dict, resume: bool = False, defaults: dict | None = None
    ) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        run_file = self.out / RUN_FILE
        self.records: list[dict] = []
        if resume and run_file.exists():
            saved = {**(defaults or {}), **json.loads(run_file.read_text(encoding="utf-8"))}
            changed = [k for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
            if changed:
                k = changed[0]
                raise ValueError(
                    f"--resume: {self.out} was written with --{k.replace('_', '-')} {saved.get(k)!r}, "
                    f"now {settings.get(k)!r}; resume with the same settings or choose another --output"
                )
            self.records = self._finished_records()
        else:
            if resume:
                print(f"[search] --resume: nothing to resume in {self.out}; starting a new run", file=sys.stderr)
            for name in (RESULTS, *FINAL_FILES):
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.out / TREES_DIR, ignore_errors=True)
            atomic_write_json(run_file, settings)
        (self.out / TREES_DIR).mkdir(exist_ok=True)
        self.done = {r["tree_id"] for r in self.records}

    def _finished_records(self) -> list[dict]:
        """Lines of ``results.jsonl`` whose tree file exists; a torn last line (a kill mid-write) is dropped and
        the file rewritten without it."""
        path = self.out / RESULTS
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break
                raise ValueError(f"--resume: {path}:{number} is not valid JSON") from None
            if tree_path(self.out, record["tree_id"]).exists():
                records.append(record)
        if len(records) != len(lines):
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            os.replace(tmp, path)
        return records

    def write(self, records: Sequence[dict], trees: Iterable[SearchTree]) -> None:
        """Save finished trees, then append their result lines (flushed and fsynced)."""
        for tree in trees:
            atomic_write_json(tree_path(self.out, tree.tree_id), tree.to_dict())
        with open(self.out / RESULTS, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(record) + "\n" for record in records))
            f.flush()
            os.fsync(f.fileno())
        self.records += records
        self.done |= {r["tree_id"] for r in records}

    def trees(self) -> list[SearchTree]:
        """Every finished tree, in the order of ``results.jsonl``."""
        return [
            SearchTree.from_dict(json.loads(tree_path(self.out, r["tree_id"]).read_text(encoding="utf-8")))
            for r in self.records
        ]
