"""fastlmk's Triton backend: fused kernels for every op, forward and backward.

This module is the ``backend="triton"`` kernel set (:func:`fastlmk.ops.backends.kernels`): the
functions below take *validated, contiguous* tensors and follow the tensor-level interface of
:mod:`fastlmk.ops._interface` (the same names, arguments and returns as
``fastlmk.ops._cpp.CppKernels``).

Data in float32, float16, bfloat16 (accumulated in float32) or float64 (accumulated in float64);
stats, ctrl and coef in the accumulation dtype. Each kernel module (``soft_argmax``,
``gaussian_heatmaps``, ``tps_warp``, ``tps_transform_points``) holds private ``@triton.jit``
kernels whose docstrings state the forward and backward formulas, and the host functions that
pick block sizes and launch them. Importing this module registers every op's forward and backward
over these kernels as ``torch.ops.fastlmk.triton_<op>`` (:func:`fastlmk.ops._op.register_triton`):
``torch.library.triton_op`` operators, which ``torch.compile`` can trace into.

On CUDA tensors the kernels are compiled by Triton; on CPU tensors they run only in Triton's
interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how the tests
check them on machines without a GPU.
"""

import sys

from fastlmk.ops import _op
from fastlmk.ops.triton.gaussian_heatmaps import gaussian_heatmaps_backward, gaussian_heatmaps_forward
from fastlmk.ops.triton.soft_argmax import soft_argmax_backward, soft_argmax_forward
from fastlmk.ops.triton.tps_transform_points import tps_transform_points_backward, tps_transform_points_forward
from fastlmk.ops.triton.tps_warp import tps_warp_backward, tps_warp_forward

__all__ = [
    "gaussian_heatmaps_backward",
    "gaussian_heatmaps_forward",
    "soft_argmax_backward",
    "soft_argmax_forward",
    "tps_transform_points_backward",
    "tps_transform_points_forward",
    "tps_warp_backward",
    "tps_warp_forward",
]

_op.register_triton(sys.modules[__name__])
