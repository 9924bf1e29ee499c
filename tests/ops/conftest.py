"""Kernel-test setup: Triton interpreter on CPU-only machines, NaN-poisoned fresh allocations."""

from __future__ import annotations

import pytest
import torch

# TRITON_INTERPRET=1 (CPU-only machines) is set in tests/conftest.py: it must precede the first import of any
# @triton.jit kernel, and other test folders (tests/models) import the kernels before this file is read.


def _poisoned(factory):
    """Wrap an allocator so that floating-point results start as NaN: unwritten outputs then fail the tests."""

    def allocate(*args, **kwargs):
        out = factory(*args, **kwargs)
        if out.is_floating_point():
            out.fill_(float("nan"))
        return out

    return allocate


@pytest.fixture(autouse=True)
def nan_poison(monkeypatch):
    monkeypatch.setattr(torch, "empty", _poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned(torch.Tensor.new_empty))
