"""The ops layer: fused kernels for landmark discovery, with their dispatch and reference.

Its public functions are fastlmk's (``fastlmk/__init__.py`` re-exports them and lists them in
``__all__``); each kernel op takes ``backend="auto" | "reference" | "cpu" | "cuda" | "triton"``:

* :func:`soft_argmax` - heatmap logits -> (x, y) points
* :func:`gaussian_heatmaps` - points -> Gaussian maps
* :func:`tps_fit`, :func:`random_tps`, :class:`TPS` - thin-plate splines
* :func:`tps_warp` - warp images with splines
* :func:`tps_transform_points` - map points with splines

Where the pieces live: each op module (``soft_argmax.py``, ``gaussian_heatmaps.py``,
``tps_warp.py``, ``tps_transform_points.py``) holds the public function (argument checks, the
docstring with the math) and the op's one declaration (:func:`fastlmk.ops._op.declare`), which
builds its ``torch.library`` operators, its eager ``autograd.Function`` and the backend switch.
``backends.py`` resolves ``backend=`` and says whether a backend can run; the kernel sets it
hands out implement :mod:`fastlmk.ops._interface` (``_cpp.py`` over the compiled ``fastlmk._C_cpu``
/ ``fastlmk._C_cuda``, ``triton/`` in Triton). ``reference.py`` is the readable pure-PyTorch
version of every op, ``tps.py`` the spline container and fitting.
"""

from fastlmk.ops import reference
from fastlmk.ops.backends import BACKENDS
from fastlmk.ops.gaussian_heatmaps import gaussian_heatmaps
from fastlmk.ops.soft_argmax import soft_argmax
from fastlmk.ops.tps import TPS, identity_tps, random_tps, tps_fit
from fastlmk.ops.tps_transform_points import tps_transform_points
from fastlmk.ops.tps_warp import tps_warp
