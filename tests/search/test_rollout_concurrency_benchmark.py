"""benchmarks/rollout_concurrency.py: its server model serves ``capacity`` requests at once, each taking prefill +
length x per-token time, and a small simulated run shows what the benchmark reports (same trees for both lockstep
modes, faster concurrent and async modes)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location(
    "rollout_concurrency", Path(__file__).parents[2] / "benchmarks" / "rollout_concurrency.py"
)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # its dataclasses look their module up
spec.loader.exec_module(bench)


def test_server_serves_capacity_requests_at_once_each_prefill_plus_length_times_per_token():
    # sigma 0: every answer is the median, 100 tokens x 10 ms + 0.5 s prefill = 1.5 simulated s per request
    model = bench.ServerModel(median=100, sigma=0.0, per_token_s=0.01, prefill_s=0.5, capacity=2)
    assert model.length(np.random.default_rng(0)) == 100
    server = bench.SimulatedServer(model, scale=0.05, seed=0, concurrent=True)
    start = time.perf_counter()
    out = server.generate([[{"role": "user", "content": "q"}]] * 4)  # 4 requests, 2 at a time: 2 x 1.5 s
    elapsed = (time.perf_counter() - start) / 0.05
    server.close()
    assert len(out) == 4 and 2.9 < elapsed < 4.4


def test_lengths_are_lognormal_with_the_given_median_and_cut_at_max_tokens():
    model = bench.ServerModel(median=4096, sigma=0.8, max_tokens=32768)
    rng = np.random.default_rng(0)
    lengths = np.array([model.length(rng) for _ in range(20000)])
    assert abs(np.median(lengths) / 4096 - 1) < 0.03
    assert abs(np.std(np.log(lengths[lengths < 32768])) - 0.8) < 0.05 and lengths.max() == 32768


def test_small_simulated_run_reports_speedups_and_equal_lockstep_trees():
    summary = bench.main(["--trees", "8", "--nodes", "4", "--repeats", "1", "--time-scale", "0.0005"])
    assert summary["refinement_share"]["lockstep"] == summary["refinement_share"]["lockstep_concurrent"]
    assert summary["speedup_concurrent_agents"] > 1.2
    assert summary["speedup_async_vs_lockstep"] > 1.5
