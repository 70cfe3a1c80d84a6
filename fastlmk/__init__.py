"""fastlmk: unsupervised facial landmark discovery with fused C++/CUDA/Triton kernels.

The ops (each with ``backend="auto" | "reference" | "cpu" | "cuda" | "triton"``):

* :func:`soft_argmax` - heatmap logits -> (x, y) points
* :func:`gaussian_heatmaps` - points -> Gaussian maps
* :func:`tps_fit`, :func:`random_tps`, :class:`TPS` - thin-plate splines
* :func:`tps_warp` - warp images with splines
* :func:`tps_transform_points` - map points with splines
"""

import torch as _torch  # noqa: F401  (load torch, and its OpenMP runtime, before the kernels)

from fastlmk import _source_tree

# Imported from an uncompiled source checkout (e.g. `python -m fastlmk.train` from the repository
# root)? Then take the compiled modules from the installed build of the same csrc/.
_source_tree.attach_installed_kernels(__path__)

from fastlmk import reference  # noqa: F401  (fastlmk.reference: the readable pure-PyTorch ops)
from fastlmk.ops import (BACKENDS, TPS, gaussian_heatmaps, identity_tps, random_tps, soft_argmax,
                         tps_fit, tps_transform_points, tps_warp)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "TPS",
    "gaussian_heatmaps",
    "identity_tps",
    "random_tps",
    "soft_argmax",
    "tps_fit",
    "tps_transform_points",
    "tps_warp",
]
