"""Shared fixtures: offline environment, CPU-only TRL configs, tiny models built once per session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and with pytest-xdist workers (and torchrun ranks) on 2 cores
# OpenMP threads oversubscribe the CPU and run ~5x slower; one thread per process is the fast setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton kernels run in the interpreter on CPU-only machines. This must be set before any @triton.jit kernel is
# imported (tests/models imports them at collection time), so it lives here and not in tests/ops/conftest.py.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# compare fp32 kernels against references without TF32 rounding on GPUs
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The package finds local data only through $TRL_MARS_DATA (trl_mars.data.locations); tests, like CI, use the
# workspace copy beside the checkout unless it is set. Subprocesses (recipes) inherit it.
os.environ.setdefault("TRL_MARS_DATA", str(REPO_ROOT.parent / "shared" / "data"))
SHARED_DATA = Path(os.environ["TRL_MARS_DATA"])


@pytest.fixture(autouse=True)
def force_cpu(monkeypatch):
    """TRL's configs default to bf16; tests run on CPU in fp32 (as TRL's own conftest does)."""
    from trl.trainer.base_config import _BaseConfig

    original = _BaseConfig.__post_init__

    def post_init(self):
        self.use_cpu = True
        self.bf16 = False
        original(self)

    monkeypatch.setattr(_BaseConfig, "__post_init__", post_init)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(
            f"shared data not found at {SHARED_DATA}: set TRL_MARS_DATA to a folder holding "
            "humaneval/HumanEval.jsonl.gz and movielens/ (ml-latest-small)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp().parent / "trl_mars_tiny"


@pytest.fixture(scope="session", autouse=True)
def package_cache(tiny_cache) -> Path:
    """The package's cache (tiny models built from ids, downloads) is the session's folder, not ~/.cache/trl_mars."""
    os.environ.setdefault("TRL_MARS_CACHE", str(tiny_cache))
    return Path(os.environ["TRL_MARS_CACHE"])


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from trl_mars.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_qwen2_path(tiny_cache) -> str:
    from trl_mars.testing import tiny_model_path

    return tiny_model_path("qwen2", cache_dir=tiny_cache)


@pytest.fixture(scope="session")
def tiny_llama_path(tiny_cache) -> str:
    from trl_mars.testing import tiny_model_path

    return tiny_model_path("llama", cache_dir=tiny_cache)


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo process group (FSDP2 on CPU), torn down after the test."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
