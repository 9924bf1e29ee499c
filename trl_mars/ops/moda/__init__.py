"""Mixture-of-depths attention (MoDA, arXiv 2603.15619): Triton kernels, a fast CPU path and the reference.

`moda_attention` dispatches to the Triton kernels on CUDA and to the CPU path elsewhere; `naive_moda` is the
O(T^2) PyTorch oracle; `DepthKVBuffer` is the preallocated per-forward depth buffer used by the models.
"""

from trl_mars.ops.moda.attention import Backend, MoDAFunction, moda_attention
from trl_mars.ops.moda.depth import DepthKVBuffer
from trl_mars.ops.moda.masked import masked_moda_attention
from trl_mars.ops.moda.naive import naive_moda

__all__ = ["Backend", "DepthKVBuffer", "MoDAFunction", "masked_moda_attention", "moda_attention", "naive_moda"]
