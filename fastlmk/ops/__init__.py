"""The ops layer: fused kernels for landmark discovery, with their dispatch and reference.

The public functions (re-exported as ``fastlmk.<name>``) each take
``backend="auto" | "reference" | "cpu" | "cuda" | "triton"``:

* :func:`soft_argmax` - heatmap logits -> (x, y) points
* :func:`gaussian_heatmaps` - points -> Gaussian maps
* :func:`tps_fit`, :func:`random_tps`, :class:`TPS` - thin-plate splines
* :func:`tps_warp` - warp images with splines
* :func:`tps_transform_points` - map points with splines
"""

from fastlmk.ops import reference
from fastlmk.ops.backends import BACKENDS
from fastlmk.ops.gaussian_heatmaps import gaussian_heatmaps
from fastlmk.ops.soft_argmax import soft_argmax
from fastlmk.ops.tps import TPS, identity_tps, random_tps, tps_fit
from fastlmk.ops.tps_transform_points import tps_transform_points
from fastlmk.ops.tps_warp import tps_warp

__all__ = [
    "BACKENDS",
    "TPS",
    "gaussian_heatmaps",
    "identity_tps",
    "random_tps",
    "reference",
    "soft_argmax",
    "tps_fit",
    "tps_transform_points",
    "tps_warp",
]
