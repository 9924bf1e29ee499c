"""``MultiAgentTreeTrainer`` under 2-process CPU DDP (torchrun, gloo): replicas stay in sync, ranks split the data.

``accelerate launch --cpu --num_processes 2`` silently runs one process on CPU, so the test launches
``torchrun --nproc_per_node 2`` on ``mars2_ddp_worker.py`` and checks the JSON each rank writes. Heterogeneous
agents here; the homogeneous run is in ``test_mars2_config_matrix.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import run_ddp_worker  # noqa: E402


@pytest.fixture(scope="module", params=["ddp", "lockstep"])
def ranks(request, tmp_path_factory, tiny_qwen2_path, tiny_llama_path) -> list[dict]:
    """Both ranks' reports, plain DDP and with the search in lockstep across processes (what FSDP runs)."""
    return run_ddp_worker(tmp_path_factory.mktemp(request.param), tiny_qwen2_path, tiny_llama_path, request.param)


pytestmark = pytest.mark.distributed


def test_two_ranks_ddp_wrapped(ranks):
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 for r in ranks)
    for r in ranks:
        assert set(r["agents"]) == {"qwen", "llama"}
        assert all(a["ddp"] for a in r["agents"].values()), r["agents"]


def test_replicas_stay_in_sync(ranks):
    """Each rank trains on different nodes with different advantages; DDP's all-reduce keeps weights equal.

    A policy steps only when every rank holds a full batch, so both ranks make floor(min samples / batch) updates
    (ranks draw agents with different seeds, so their sample counts differ)."""
    for name in ("qwen", "llama"):
        first, second = (r["agents"][name] for r in ranks)
        expected = min(first["samples"], second["samples"]) // first["batch"]
        assert first["updates"] == second["updates"] == expected >= 1, (name, first, second)
        assert first["checksum_before"] == second["checksum_before"]
        assert first["checksum"] != pytest.approx(first["checksum_before"], rel=1e-9), f"{name} did not train"
        assert first["checksum"] == pytest.approx(second["checksum"], rel=1e-12, abs=0.0), name


def test_ranks_search_different_problems(ranks):
    first, second = ranks
    assert first["trees"] == second["trees"] == 2  # trees_per_step=1, 2 steps
    assert len(set(first["problems"])) == 2
    assert not set(first["problems"]) & set(second["problems"])


def test_lockstep_ranks_make_the_same_generation_calls(ranks, request):
    """Under lockstep (FSDP: every forward is a collective) both ranks call the same models in the same order, with
    ``synced_gpus``, although they search different problems with differently seeded agent selection."""
    first, second = (r["generate_calls"] for r in ranks)
    if "lockstep" not in request.node.callspec.id:
        assert all(synced is None for _, synced in first + second)
        assert first != second  # the scenario needs lockstep: without it the ranks' calls differ
        return
    assert first == second and len({model for model, _ in first}) == 2  # both agents, same order
    assert all(synced is True for _, synced in first)


def test_evaluation_searches_each_problem_once_and_gathers(ranks, request):
    """``evaluate_search`` shards the held-out problems across ranks (3 problems: 2 + 1), each searched once, and
    every rank returns the mean over all of them. Before the fix each rank searched all 3 with its own RNG and
    returned its own numbers. Under lockstep (FSDP) the rank with fewer problems still takes part in every
    generation call."""
    first, second = ranks
    problems = first["eval_problems"] + second["eval_problems"]
    assert len(problems) == len(set(problems)) == 3 and len(first["eval_problems"]) == 2
    per_tree = first["eval_per_tree"] + second["eval_per_tree"]
    assert len(per_tree) == 3
    assert first["eval_metrics"] == second["eval_metrics"]
    expected = {k: sum(m[k] for m in per_tree) / 3 for k in per_tree[0]}
    assert first["eval_metrics"] == pytest.approx(expected)
    if "lockstep" in request.node.callspec.id:
        assert first["eval_generate_calls"] == second["eval_generate_calls"] != []
