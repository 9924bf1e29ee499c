"""Kill -9 mid-training, then resume: the run continues from the last COMPLETE checkpoint and ends exactly where
an uninterrupted run ends (weights, buffers, posteriors/RNG of the search, trees). Heterogeneous agents here; the
homogeneous run is in ``test_mars2_config_matrix.py``."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import check_kill_and_resume  # noqa: E402


@pytest.mark.slow
def test_kill_and_resume_continues_identically(tmp_path, tiny_cache):
    check_kill_and_resume(tmp_path, tiny_cache, "heterogeneous")
