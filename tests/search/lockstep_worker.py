"""One process of the lockstep search test (tests/search/test_lockstep.py).

Generation is a collective here, as it is for FSDP-sharded models: every ``generate`` all-gathers (model, call
index) and fails unless all processes make the same call. Writes its call counts and trees as JSON.

    python lockstep_worker.py RANK WORLD RENDEZVOUS_FILE OUT_DIR {lockstep,free}
"""

from __future__ import annotations

import json
import sys
import zlib
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from trl_mars.search import SearchConfig, SearchProblem, TreeSearch
from trl_mars.search.backends import Generation
from trl_mars.search.verify import Verdict


class Backend:
    """Answers with code derived from the prompt; ``collective``: each call is checked against all processes."""

    def __init__(self, name: str, collective: bool) -> None:
        self.name, self.collective, self.calls = name, collective, 0

    def generate(self, prompts, on_text=None) -> list[Generation]:
        if self.collective:
            seen = [None] * dist.get_world_size()
            dist.all_gather_object(seen, (self.name, self.calls))
            if len(set(seen)) != 1:
                raise RuntimeError(f"processes out of step: {seen}")
        self.calls += 1
        return [Generation([0], [1], f"```python\nx = {zlib.crc32(repr(p).encode())}\n```") for p in prompts]


class Verifier:
    """Passes about a third of the programs, deterministically."""

    def submit(self, code: str, tests, entry_point=None, setup: str = "") -> Future:
        future = Future()
        ok = float(zlib.crc32(code.encode()) % 3 == 0)
        future.set_result(Verdict(ok, ok, {"summary": "", "detailed": "", "failures": []}))
        return future


def search(rank: int, collective: bool, sync) -> tuple[dict, list]:
    problems = [
        SearchProblem(f"r{rank}p{i}", f"problem {i} of process {rank}", "assert x") for i in range(3 - 2 * rank)
    ]
    agents = {name: Backend(name, collective) for name in ("a", "b")}
    engine = TreeSearch(agents, Verifier(), SearchConfig(max_nodes=5, stop_on_pass=True), seed=rank, sync=sync)
    trees = engine.run(problems)
    return {n: b.calls for n, b in agents.items()}, [t.to_dict() for t in trees]


def max_over_processes(value: int) -> int:
    t = torch.tensor([value])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def main(rank: int, world: int, rendezvous: str, out: Path, mode: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=20))  # fmt: skip
    calls, trees = search(rank, collective=True, sync=max_over_processes if mode == "lockstep" else None)
    _, alone = search(rank, collective=False, sync=None)  # the same search without other processes
    (out / f"rank{rank}.json").write_text(json.dumps({"calls": calls, "trees": trees, "alone": alone}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), sys.argv[5])
