"""Self-play on 2 processes (torchrun, gloo, CPU) per preset, and kill -9 + resume per preset against an
uninterrupted run.

``accelerate launch --cpu --num_processes 2`` silently runs one process on CPU, so the tests launch
``torchrun --nproc_per_node 2``. The runs are ``selfplay_runs.py`` (scripted Challenger parser and Solver scoring, so
the memory bank and pool fill) and, for WIST, the recipe itself over a loopback SearXNG fake whose results change
with every request (as live search does), with the SFT warm-up on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from searxng_fake import FakeSearxng  # noqa: E402

from trl_mars.testing.distributed import free_port, run_or_stop  # noqa: E402

RUNS = HERE / "selfplay_runs.py"
RECIPE = HERE.parents[1] / "recipes" / "selfplay.py"
TIMEOUT_S = 300
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _env() -> dict:
    root = str(HERE.parents[1])
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return run_or_stop(cmd, _env(), TIMEOUT_S)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    done = _run([*cmd, "--master_port", str(free_port()), *args])
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


@pytest.mark.parametrize("preset", ["rzero", "rdiverse"])
def test_separate_roles_on_two_processes(preset, tmp_path, tiny_qwen2_path):
    """Bug: every multi-process run crashed at step 1 (rank 1: ``len`` of an int in the penalty offsets)."""
    torchrun(str(RUNS), str(tmp_path), preset, tiny_qwen2_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["ddp"]) for r in ranks] == [(0, 2, True), (1, 2, True)]
    first, second = ranks
    assert first["state"] == second["state"]  # replicated pool, memory, RNG and counters
    assert first["adapters"] == second["adapters"]  # DDP kept the replicas equal
    assert first["adapters"]["default"] != first["adapters"]["challenger"]  # both roles trained (same init)
    state, rows = first["state"], {row["step"]: row for row in first["rows"]}
    # C1 S2 S3 | C4: the pool is built at step 2 from both processes' questions, then reused at step 3
    assert [rows[s]["role_challenger"] for s in (1, 2, 3, 4)] == [1.0, 0.0, 0.0, 1.0]
    assert rows[2]["solver_pool_size"] == len(state["pool"]) > 0 and "solver_pool_size" not in rows[3]
    if preset == "rdiverse":
        assert len(state["memory"]["entries"]) == len(state["pool"])  # iteration 1's admitted questions
        assert rows[1]["map_penalty"] == 0.0 < rows[4]["map_penalty"]  # empty bank, then iteration 1's
        assert rows[3]["replayed"] == 0.0  # nothing from earlier iterations yet
    else:
        assert state["memory"]["entries"] == []


def test_wist_recipe_on_two_processes_over_live_search(tmp_path):
    """The wist recipe as a user runs it under torchrun (SFT warm-up, tree, SearXNG corpus).

    Bugs: the warm-up raced (one rank read ``warmup-base`` before the other wrote it); every rank queried the search
    and looked rank 0's document ids up in its own store (KeyError with results that change per request)."""
    out = tmp_path / "wist"
    with FakeSearxng() as fake:
        torchrun(
            str(RECIPE),
            "--config",
            str(RECIPE.parent / "configs" / "wist.yaml"),
            "--output_dir",
            str(out),
            "--corpus",
            "searxng",
            "--corpus_path",
            fake.url,
            "--sft_warmup_steps",
            "1",
            "--max_steps",
            "2",
            "--save_steps",
            "2",
            "--max_completion_length",
            "8",
            "--num_solver_samples",
            "2",
            "--tree_num_proposals",
            "2",
            "--tree_expansion_max_failed_rounds",
            "1",
        )
        searches = [p for p, _ in fake.requests if p.startswith("/search")]
    assert (out / "checkpoint-2" / "trl_mars_state" / "complete.json").exists()
    state = [json.loads((out / "checkpoint-2" / "trl_mars_state" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert state[0]["tree"] == state[1]["tree"]  # the same tree on both processes
    assert state[0]["corpus"] == state[1]["corpus"]  # the main process's documents, broadcast
    urls = [d["doc_id"] for d in state[0]["corpus"]["documents"]]
    assert urls and all(u.startswith(fake.url + "/page/") for u in urls)
    # only the main process searched: at most one lookup per node (not the root) and one corpus suggestion per
    # expansion (every process querying would double this)
    # the 1-step warm-up writes mostly invalid candidates: WIST's retries ran, the same rounds on both processes
    assert state[0]["counters"].get("challenger_retries", 0) + state[1]["counters"].get("challenger_retries", 0) > 0
    nodes, expansions = state[0]["tree"]["nodes"], state[0]["counters"]["expansions"]
    assert expansions > 0 and len(searches) <= len(nodes) - 1 + expansions
    tree = json.loads((out / "domain_tree.json").read_text())
    assert tree["children"][0]["name"] == "Movies"


@pytest.mark.parametrize(("preset", "kill_at"), [("rzero", 2), ("rdiverse", 2), ("wist", 2)])
def test_kill_and_resume_matches_an_uninterrupted_run(preset, kill_at, tmp_path, tiny_qwen2_path):
    """SIGKILL right after checkpoint ``kill_at``; resuming it must end where an uninterrupted run ends: both
    adapters (and so the optimizer state), memory bank, pool, tree, counters and RNG.

    Bug: resuming ``roles: separate`` crashed: the reloaded inactive adapter was frozen, the optimizer was rebuilt
    without it and its saved state no longer fitted."""
    from selfplay_runs import build_trainer, report

    full = build_trainer(tmp_path / "full" / "run", preset, tiny_qwen2_path)
    full.train()
    expected = report(full)
    killed = _run([sys.executable, str(RUNS), str(tmp_path / "b"), preset, tiny_qwen2_path, "--kill-at", str(kill_at)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = tmp_path / "b" / "run"
    assert (run_dir / f"checkpoint-{kill_at}" / "trl_mars_state" / "complete.json").exists()
    assert not (run_dir / f"checkpoint-{kill_at + 1}").exists()
    resumed = build_trainer(run_dir, preset, tiny_qwen2_path)
    resumed.train(resume_from_checkpoint=True)
    got = report(resumed)
    assert got["trainable"] == expected["trainable"]  # both adapters in the optimizer
    assert got["state"] == expected["state"]
    assert got["adapters"].keys() == expected["adapters"].keys()
    for name, sums in expected["adapters"].items():
        assert got["adapters"][name] == pytest.approx(sums, rel=1e-9), name
    later = [r for r in expected["rows"] if r["step"] > kill_at]
    assert [r for r in got["rows"] if r["step"] > kill_at] == later
    if preset != "wist":
        assert got["state"]["pool"] and expected["adapters"]["default"] != expected["adapters"]["challenger"]
    if preset == "rdiverse":
        assert got["state"]["memory"]["entries"]
    if preset == "wist":
        assert len(got["state"]["tree"]["nodes"]) > 2 and got["state"]["corpus"]["documents"]
