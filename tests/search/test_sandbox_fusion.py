"""The SandboxFusion verifier against a loopback fake server: the same verdicts as the local sandbox (reward hacks
included: the remote returns encoded values, the verdicts are decided here), retries with exponential backoff on 5xx
and timeouts (requests counted), errors that name the URL, config fields checked by name before any model, and
``trl-mars eval`` / ``trl-mars search`` / a YAML trainer config run end to end against the fake."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from trl_mars.sandbox import Sandbox, SandboxConfig, SandboxUnavailable
from trl_mars.sandbox.remote import RemoteSandbox, SandboxFusionConfig, open_sandbox
from trl_mars.search.verify import SandboxVerifier

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from sandbox_fusion_fake import FakeSandboxFusion  # noqa: E402

TESTS = ["assert f(1) == 2", "assert f(2) == 3", "assert abs(f(3) - 4) < 1e-9", "assert f(0)"]
PROGRAMS = {
    "right": "def f(x):\n    return x + 1\n",
    "half": "def f(x):\n    return 2 if x == 1 else 0\n",
    "always_equal": "class A:\n    def __eq__(self, o): return True\n    def __sub__(self, o): return 0\n"
    "    def __bool__(self): return True\ndef f(x):\n    return A()\n",
    "int_subclass": "class I(int):\n    def __eq__(self, o): return True\ndef f(x):\n    return I(0)\n",
    "patched_builtins": "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return x + 1 if x != 3 else 99\n",
    "prints": "def f(x):\n    print(x + 1)\n",
    "loops_on_2": "def f(x):\n    while x == 2:\n        pass\n    return x + 1\n",
    "exits_in_test": "import os\ndef f(x):\n    if x == 2:\n        os._exit(0)\n    return x + 1\n",
    "raises": "def f(x):\n    return 1 / 0\n",
    "syntax_error": "def f(x) return x\n",
    "dies_at_load": "import os\nos._exit(3)\n",
}
STDIO = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}]
STDIO_PROGRAMS = {"sum": "a, b = map(int, input().split())\nprint(a + b)\n", "product": "print(2 * 5)\n"}
CALLS = [{"input": "[1, 2]\n3", "output": "[1, 2, 3]", "fn_name": "add"}, {"input": "[]\n0", "output": "[0]", "fn_name": "add"}]  # fmt: skip
CALL_PROGRAMS = {"add": "def add(xs, x):\n    return tuple(xs) + (x,)\n", "hack": "def add(xs, x):\n    return xs\n"}
LIMITS = dict(timeout_s=1.0, max_total_s=10.0)


def outcome(verdict) -> tuple:
    return verdict.score, verdict.pass_fraction, [f["status"] for f in verdict.feedback["failures"]]


@pytest.fixture(scope="module")
def fake():
    with FakeSandboxFusion() as server:
        yield server


@pytest.fixture(scope="module")
def local():
    with Sandbox(concurrency=2, **LIMITS) as sandbox:
        yield sandbox


def remote_sandbox(fake, **fusion) -> RemoteSandbox:
    return RemoteSandbox(SandboxFusionConfig(fake.url, **{"concurrency": 2, **fusion}), **LIMITS)


def humaneval_jobs(n: int = 4) -> list[tuple[str, str, str]]:
    """(program, tests, entry point) of the first ``n`` HumanEval problems: the reference and a wrong answer."""
    from trl_mars.eval.cli import build_parser, load_benchmark

    args = build_parser().parse_args(["evaluate"])
    jobs = []
    for p in load_benchmark("humaneval", args)[:n]:
        check = p.check(p.reference_solution)
        jobs.append((check.program, check.tests, check.entry_point, check.setup))
        jobs.append(
            (f"def {check.entry_point}(*args):\n    return None\n", check.tests, check.entry_point, check.setup)
        )
    return jobs


def test_remote_verdicts_equal_the_local_ones_reward_hacks_included(fake, local):
    jobs = [(code, TESTS, "f") for code in PROGRAMS.values()]
    jobs += [(code, STDIO) for code in STDIO_PROGRAMS.values()] + [(code, CALLS) for code in CALL_PROGRAMS.values()]
    jobs += humaneval_jobs()
    remote = remote_sandbox(fake)
    local_verdicts = [SandboxVerifier(local).submit(*job).result() for job in jobs]
    before = fake.requests
    remote_verdicts = [f.result() for f in [SandboxVerifier(remote).submit(*job) for job in jobs]]
    assert [outcome(v) for v in remote_verdicts] == [outcome(v) for v in local_verdicts]
    by_name = dict(zip(PROGRAMS, remote_verdicts))
    assert outcome(by_name["right"]) == (1.0, 1.0, [])
    assert outcome(by_name["half"]) == (0.0, 0.25, ["failed", "failed", "failed"])
    for hack in ("always_equal", "int_subclass", "patched_builtins"):  # decided here, on values the program returned
        assert by_name[hack].score == 0.0, hack
    assert outcome(by_name["loops_on_2"]) == (0.0, 0.75, ["timeout"])  # the next request went on after the timeout
    assert outcome(by_name["exits_in_test"]) == (0.0, 0.75, ["crashed"])
    assert [outcome(v)[:2] for v in remote_verdicts[len(PROGRAMS) :][:4]] == [(1.0, 1.0), (0.0, 0.5), (1.0, 1.0), (0.0, 0.0)]  # fmt: skip
    assert all(v.score == 1.0 for v in remote_verdicts[-8::2]) and all(v.score == 0 for v in remote_verdicts[-7::2])
    assert "sandbox_error" not in json.dumps([v.feedback for v in remote_verdicts])
    # one request per check, plus one more after each test that timed out or crashed the child
    assert fake.requests - before == len(jobs) + 2
    remote.close()


def test_the_shipped_files_are_all_the_remote_child_imports(tmp_path):
    """The harness and what it imports, alone beside the standard library (``-I -S``: no site-packages, so no
    installed trl_mars), import and run: a module the harness starts to import but ``SHIPPED`` lacks fails here."""
    import base64
    import subprocess

    from trl_mars.sandbox.remote import shipped_files

    for path, data in shipped_files().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(base64.b64decode(data))
    code = "import sys; sys.path.insert(0, '.'); from trl_mars.sandbox.harness import Streams, run_check; print('ok')"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


def test_the_remote_never_sees_expected_values(fake):
    seen = []
    import sandbox_fusion_fake

    run_code = sandbox_fusion_fake.run_code
    sandbox_fusion_fake.run_code = lambda request: seen.append(json.dumps(request)) or run_code(request)
    try:
        with remote_sandbox(fake) as remote:
            result = remote.run("def f(x):\n    return x\n", ["assert f(7) == 123456789"], "f")
    finally:
        sandbox_fusion_fake.run_code = run_code
    assert not result.passed and result.verdicts[0].expected == "123456789"
    import base64

    check = json.loads(base64.b64decode(json.loads(seen[0])["files"]["check.json"]))
    assert "123456789" not in json.dumps(check) and "f(7)" in json.dumps(check)


def test_retries_on_5xx_with_exponential_backoff(fake):
    with remote_sandbox(fake, retries=3, backoff_s=0.25) as remote:
        waits: list[float] = []
        remote.client.sleep = waits.append
        fake.fail_next = [503, 502, 500]
        before = fake.requests
        result = remote.run(PROGRAMS["right"], TESTS, "f")
    assert result.passed and fake.requests - before == 4
    assert waits == [0.25, 0.5, 1.0]


def test_exhausted_retries_and_client_errors_name_the_url(fake):
    with remote_sandbox(fake, retries=2, backoff_s=0.0) as remote:
        fake.fail_next = [500, 500, 500]
        before = fake.requests
        verdict = SandboxVerifier(remote).submit(PROGRAMS["right"], TESTS, "f").result()
        assert fake.requests - before == 3
        assert (
            verdict.score == 0.0
            and f"SandboxFusion at {fake.url}/run_code failed after 3 attempt(s): HTTP 500"
            in (verdict.feedback["sandbox_error"])
        )
        fake.fail_next = [404]  # a client error is not retried
        before = fake.requests
        result = remote.run(PROGRAMS["right"], TESTS, "f")
        assert fake.requests - before == 1 and "failed after 1 attempt(s): HTTP 404" in result.sandbox_error
        assert [v.status.value for v in result.verdicts] == ["crashed"] * len(TESTS)


def test_a_request_that_times_out_is_retried(fake):
    fake.fail_next, fake.hang_s = ["hang"], 5.0  # past the client's 2.0 + 2 (grace) + 0.2 s
    config = SandboxConfig(timeout_s=1.0, max_total_s=2.0)
    with RemoteSandbox(SandboxFusionConfig(fake.url, request_timeout_s=0.2, backoff_s=0.0), config) as remote:
        before = fake.requests
        result = remote.run(PROGRAMS["right"], TESTS, "f")
    assert result.passed and fake.requests - before == 2


def test_an_unreachable_server_fails_at_once_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(SandboxUnavailable, match=f"SandboxFusion at {url}/v1/ping did not answer"):
        open_sandbox(SandboxConfig(), SandboxFusionConfig(url, request_timeout_s=2.0))


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"verifier": "remote"}, "verifier"),
        ({"verifier": "sandbox_fusion"}, "sandbox_fusion_url"),
        ({"verifier": "sandbox_fusion", "sandbox_fusion_url": "localhost:8080"}, "sandbox_fusion_url"),
        (
            {"verifier": "sandbox_fusion", "sandbox_fusion_url": "http://h:1", "sandbox_fusion_retries": -1},
            "sandbox_fusion_retries",
        ),  # fmt: skip
        (
            {"verifier": "sandbox_fusion", "sandbox_fusion_url": "http://h:1", "sandbox_fusion_concurrency": 0},
            "sandbox_fusion_concurrency",
        ),  # fmt: skip
        (
            {"verifier": "sandbox_fusion", "sandbox_fusion_url": "http://h:1", "sandbox_fusion_request_timeout_s": 0},
            "sandbox_fusion_request_timeout_s",
        ),  # fmt: skip
        ({"verifier": "sandbox_fusion", "sandbox_fusion_url": "http://h:1", "sandbox_workers": 2}, "sandbox_workers"),
        ({"sandbox_fusion_url": "http://h:1"}, "sandbox_fusion_url"),
        ({"sandbox_fusion_backoff_s": 2.0}, "sandbox_fusion_backoff_s"),
    ],
)
def test_config_fields_are_checked_by_name(tmp_path, fields, name):
    from trl_mars.trainers.mars2_config import MultiAgentTreeConfig

    with pytest.raises(ValueError, match=rf"MultiAgentTreeConfig\.{name}\b"):
        MultiAgentTreeConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **fields)


def test_trl_mars_eval_with_the_remote_verifier(fake, capsys):
    from trl_mars.eval.cli import main

    before = fake.requests
    argv = ["evaluate", "--limit", "3", "--k", "1", "--quiet", "--concurrency", "2"]
    assert main([*argv, "--verifier", "sandbox_fusion", "--sandbox-fusion-url", fake.url]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pass@1"] == 1.0 and fake.requests - before == 3
    with pytest.raises(SystemExit, match="--sandbox-fusion-url needs --verifier sandbox_fusion"):
        main([*argv, "--sandbox-fusion-url", fake.url])
    with pytest.raises(SystemExit, match="--sandbox-fusion-url: SandboxFusionConfig.url has an invalid value"):
        main([*argv, "--verifier", "sandbox_fusion", "--sandbox-fusion-url", "ftp://x"])


def test_trl_mars_search_with_the_remote_verifier_matches_the_local_one(fake, tmp_path, monkeypatch):
    from test_cli_runs import run, without_seconds

    local = run(monkeypatch, tmp_path / "local")
    before = fake.requests
    remote = run(monkeypatch, tmp_path / "remote", "--verifier", "sandbox_fusion", "--sandbox-fusion-url", fake.url)
    assert fake.requests - before >= 5  # every node scored remotely (5 problems, up to 4 nodes each)
    assert without_seconds(remote) == without_seconds(local)
    assert remote["runs"]["system"]["metrics"]["pass@1"] > 0


def test_a_yaml_trainer_config_scores_its_search_remotely(fake, tmp_path, tiny_qwen2_path):
    from trl import ScriptArguments

    from trl_mars.data.code_tasks import code_task_splits
    from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
    from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer
    from trl_mars.utils.recipes import parse_recipe_args

    config = tmp_path / "remote.yaml"
    config.write_text(
        f"agents:\n  - name: solo\n    model: {tiny_qwen2_path}\nmax_nodes: 2\ntrees_per_step: 2\nmax_steps: 1\n"
        "max_completion_length: 8\nper_device_train_batch_size: 1\nuse_cpu: true\nbf16: false\nreport_to: none\n"
        f"save_strategy: 'no'\noutput_dir: {tmp_path / 'out'}\nverifier: sandbox_fusion\n"
        f"sandbox_fusion_url: {fake.url}\nsandbox_fusion_retries: 1\n"
    )
    _, args = parse_recipe_args((ScriptArguments, MultiAgentTreeConfig), config, ["--sandbox_fusion_concurrency", "2"])
    assert (args.verifier, args.sandbox_fusion_url, args.sandbox_fusion_concurrency) == ("sandbox_fusion", fake.url, 2)
    train, _ = code_task_splits(2, 0, seed=0)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    try:
        assert isinstance(trainer.sandbox, RemoteSandbox) and trainer.sandbox.fusion.retries == 1
        assert trainer.search.verifier.sandbox is trainer.sandbox  # the search scores its nodes there
        trees = trainer.run_search(trainer.problems(list(train)))  # the untrained model writes no code block
        assert [len(t) for t in trees] == [2, 2]
        from trl_mars.rewards import extract_code

        before = fake.requests
        verdicts = [
            trainer.search.verifier.submit(extract_code(row["completion"]), row["tests"]).result() for row in train
        ]
        rewards = trainer.reward_funcs[0](prompts=list(train["prompt"]), completions=list(train["completion"]),
                                          tests=list(train["tests"]))  # fmt: skip
        assert [v.score for v in verdicts] == [1.0, 1.0] and rewards == [1.0, 1.0]
        assert fake.requests - before == 4
    finally:
        trainer.sandbox.close()


def test_the_trainer_fails_on_an_unreachable_server_before_any_model_loads(tmp_path, tiny_qwen2_path, monkeypatch):
    from trl_mars.data.code_tasks import code_task_splits
    from trl_mars.trainers import mars2_trainer
    from trl_mars.trainers.mars2_config import MultiAgentTreeConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the verifier was checked")

    monkeypatch.setattr(mars2_trainer, "create_model_from_path", no_model)
    args = MultiAgentTreeConfig(
        output_dir=str(tmp_path), agents=[{"name": "solo", "model": tiny_qwen2_path}], use_cpu=True,
        report_to="none", verifier="sandbox_fusion", sandbox_fusion_url=url, sandbox_fusion_request_timeout_s=2.0,
    )  # fmt: skip
    with pytest.raises(SandboxUnavailable, match=f"SandboxFusion at {url}/v1/ping did not answer"):
        mars2_trainer.MultiAgentTreeTrainer(args=args, train_dataset=code_task_splits(2, 0, seed=0)[0])
