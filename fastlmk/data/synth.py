"""SynthFaces: procedural faces with exact landmarks, rendered on the fly, vectorised over a batch.

Every image is drawn from two sets of parameters:

* **identity** (per subject): head shape and size, skin tone, eye size / spacing / iris colour,
  eyebrows, nose length / width / depth, mouth width, lip thickness and colour, hair style and
  colour, ears, optional glasses and beard, shirt colour;
* **view** (per image of a subject): in-plane rotation (up to 30 deg), scale, translation, a
  simulated yaw (up to 30 deg), blink, smile, mouth opening, brow raise, a lighting gradient and
  a cluttered, defocused background.

Geometry. A face is designed in a frontal *template* frame (units: half the image at scale 1,
x right, y down). The simulated yaw treats the face as a vertical cylinder of radius ``R``: a
template point at horizontal position ``u`` sits at angle ``asin(u / R)`` and is seen, after a
head turn by ``phi``, at ``x = u cos(phi) + sqrt(R^2 - u^2) sin(phi)`` -- features shift
sideways and the far side foreshortens. The nose tip sticks out of the cylinder (its own,
larger radius), so it moves further than the eyes. Then a similarity transform (rotation,
scale, translation) places the head in the image. Rendering evaluates the *inverse* of this map
at every pixel (``u = x cos(phi) - sqrt(R^2 - x^2) sin(phi)``) and draws signed-distance shapes
in the template frame with a one-pixel anti-aliasing ramp; the landmarks are the template
feature centres pushed through the *forward* map. So the landmarks are exact by construction:
the eye landmark is the centre of the drawn iris, the mouth corners are the ends of the drawn
lip line, the nose landmark is the drawn nose tip.

Determinism. The parameters of item ``i`` come from ``torch.Generator`` s seeded with a hash
of ``(seed, split, subject)`` (identity) and ``(seed, split, subject, view)`` (view), so any
process -- DataLoader workers, DistributedSampler ranks -- renders the same image for the
same index. Train and test subjects are disjoint: subject ids are even in "train", odd in
"test".
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["SynthFaces", "sample_params", "render_faces", "tune_malloc", "EXTRA_NAMES"]

# the 5 annotated landmarks are fastlmk.data.landmarks.LANDMARK_NAMES; SynthFaces also knows these
EXTRA_NAMES = ("left brow", "right brow", "chin")

_SPLITS = ("train", "val", "test")
# pose regimes (the view's similarity transform and yaw): "wild" like AFLW, "aligned" like MAFL /
# aligned CelebA (eyes near fixed positions, little in-plane rotation, the face fills more of the image)
POSES = ("wild", "aligned")
_N_ID = 64  # uniforms drawn per subject
_N_VIEW = 192  # uniforms drawn per view
_N_BG_SHAPES = 7
_NOISE = 5  # low-frequency background noise grid

# colour palettes (RGB in [0, 1]); a random point between two neighbours is taken, then jittered
_SKIN = torch.tensor([[0.99, 0.86, 0.76], [0.95, 0.76, 0.62], [0.87, 0.64, 0.48], [0.72, 0.50, 0.35],
                      [0.55, 0.37, 0.25], [0.36, 0.24, 0.17]])
_HAIR = torch.tensor([[0.06, 0.05, 0.05], [0.20, 0.13, 0.08], [0.38, 0.24, 0.13], [0.62, 0.45, 0.25],
                      [0.85, 0.72, 0.45], [0.55, 0.22, 0.10], [0.60, 0.60, 0.60], [0.12, 0.10, 0.09]])
_IRIS = torch.tensor([[0.30, 0.18, 0.09], [0.18, 0.10, 0.05], [0.25, 0.45, 0.70], [0.30, 0.50, 0.30],
                      [0.45, 0.35, 0.15], [0.45, 0.52, 0.58]])
_PUPIL = (0.03, 0.03, 0.04)
_SCLERA = (0.93, 0.92, 0.90)


_MALLOC_TUNED: bool | None = None


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc): cuts CPU rendering time by up to ~20x here.

    Every PyTorch CPU op allocates its output; glibc serves large blocks (>= 128 KiB) with fresh
    ``mmap`` pages and gives them back on ``free``, so each op pays page faults on its whole
    output (on this project's sandboxed machine: 84,000 faults and ~20x the compute time per
    rendered batch). Raising ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 1 GiB
    makes freed blocks reusable. The effect is process-wide and helps any CPU training loop; the
    cost is that the process keeps its peak heap. Called by :class:`SynthFaces` on its first
    render unless the environment sets ``FASTLMK_TUNE_MALLOC=0``; the same effect can be had
    with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment.
    Returns whether the settings were applied (False off glibc).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is None:
        _MALLOC_TUNED = False
        if os.environ.get("FASTLMK_TUNE_MALLOC", "1") != "0" and sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
                M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
                _MALLOC_TUNED = bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
            except (OSError, AttributeError):
                pass
    return _MALLOC_TUNED


def _hash(*parts) -> int:
    """Stable 63-bit hash of the parts (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _uniforms(n: int, *parts) -> torch.Tensor:
    g = torch.Generator().manual_seed(_hash(*parts))
    return torch.rand(n, generator=g, dtype=torch.float64)


def _lerp(lo, hi, u):
    return lo + (hi - lo) * u


def _palette(pal: torch.Tensor, u: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """(B,) in [0, 1] -> (B, 3) colours between palette neighbours, plus a jitter in +-0.04."""
    pos = u * (pal.shape[0] - 1)
    i0 = pos.floor().long().clamp(max=pal.shape[0] - 2)
    f = (pos - i0)[:, None]
    col = pal[i0] * (1 - f) + pal[i0 + 1] * f
    return (col + (jitter - 0.5) * 0.08).clamp(0, 1)


def _pick(pal: torch.Tensor, u: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    idx = (u * pal.shape[0]).long().clamp(max=pal.shape[0] - 1)
    return (pal[idx] + (jitter - 0.5) * 0.08).clamp(0, 1)


def sample_params(seed: int, split: str, subjects, views, pose: str = "wild", static_background: bool = False,
                  static_pose: bool = False) -> dict:
    """Identity and view parameters of a batch, as a dict of float32 tensors with batch dim B.

    Args:
        seed: data set seed.
        split: "train", "val" or "test" (mixed into the hashes).
        subjects, views: int sequences of length B (global subject id, view number).
        pose: "wild" (rotation up to 30 deg, scale 0.95-1.2, shift up to 0.1, yaw up to 30 deg)
            or "aligned" (MAFL-like: rotation up to 5 deg, scale 1.15-1.3, shift up to 0.03,
            yaw up to 20 deg). The same uniforms are used, so a subject keeps its identity.
        static_background: every view of a subject has the background of its view 0 (like the
            frames of a video); otherwise each view draws its own.
        static_pose: every view of a subject has the head placement (in-plane rotation, scale,
            translation) and the lighting of its view 0; yaw and expression stay the view's own
            (like the frames of a talking-head video).
    """
    subjects, views = list(subjects), list(views)
    B = len(subjects)
    if B == 0:
        u_id = torch.zeros(0, _N_ID, dtype=torch.float64)
        u_v = torch.zeros(0, _N_VIEW, dtype=torch.float64)
    else:
        u_id = torch.stack([_uniforms(_N_ID, seed, split, "identity", s) for s in subjects])
        u_v = torch.stack([_uniforms(_N_VIEW, seed, split, "view", s, v) for s, v in zip(subjects, views)])
    i = iter(range(_N_ID))
    a = lambda: u_id[:, next(i)]  # noqa: E731  (next identity uniform, (B,))
    p: dict = {}
    # head (template frame: face centre near the origin, image half-size = 1 at scale 1)
    p["head_a"] = _lerp(0.44, 0.54, a())
    p["head_b"] = p["head_a"] * _lerp(1.22, 1.40, a())
    p["head_cy"] = _lerp(0.02, 0.08, a())
    p["jaw"] = _lerp(0.10, 0.32, a())
    p["skin"] = _palette(_SKIN, a(), u_id[:, 60:63])
    # eyes
    p["eye_x"] = p["head_a"] * _lerp(0.36, 0.44, a())
    p["eye_y"] = _lerp(-0.10, -0.04, a())
    p["eye_w"] = _lerp(0.085, 0.10, a())
    p["eye_hu"] = _lerp(0.030, 0.040, a())
    p["eye_hl"] = _lerp(0.018, 0.024, a())
    p["iris_r"] = _lerp(0.031, 0.037, a())
    p["iris"] = _pick(_IRIS, a(), torch.stack([a(), a(), a()], 1))
    # brows
    p["brow_dy"] = _lerp(0.075, 0.095, a())
    p["brow_w"] = _lerp(0.075, 0.10, a())
    p["brow_t"] = _lerp(0.013, 0.026, a())
    p["brow_arch"] = _lerp(0.005, 0.03, a())
    p["brow_tilt"] = _lerp(-0.02, 0.015, a())
    # nose
    p["nose_y"] = p["eye_y"] + _lerp(0.20, 0.26, a())
    p["nose_w"] = _lerp(0.028, 0.042, a())
    p["nose_depth"] = _lerp(0.08, 0.22, a())
    # mouth
    p["mouth_y"] = p["nose_y"] + _lerp(0.13, 0.18, a())
    p["mouth_w"] = _lerp(0.12, 0.17, a())
    p["lip_u"] = _lerp(0.016, 0.026, a())
    p["lip_l"] = _lerp(0.022, 0.034, a())
    red = torch.tensor([0.78, 0.25, 0.30])
    p["lip"] = (p["skin"] * 0.72 * (1 - (f := _lerp(0.25, 0.6, a())[:, None])) + red * f * (0.6 + 0.4 * p["skin"].mean(1, keepdim=True))).clamp(0, 1)
    # hair
    p["hair"] = _pick(_HAIR, a(), torch.stack([a(), a(), a()], 1))
    p["hair_vol"] = _lerp(1.04, 1.22, a())
    p["hairline"] = _lerp(-0.50, -0.30, a())
    p["hair_part"] = _lerp(-0.25, 0.25, a())
    p["hair_side"] = _lerp(0.0, 0.5, a())  # how far down the sides (sideburns) hair reaches
    u_long = a()
    p["hair_long"] = torch.where(u_long < 0.6, torch.zeros_like(u_long), _lerp(0.2, 1.0, (u_long - 0.6) / 0.4))
    p["hair_on"] = (a() > 0.07).double()
    # ears, beard, glasses, shirt
    p["ear"] = _lerp(0.06, 0.085, a())
    u_beard = a()
    p["beard"] = torch.where(u_beard < 0.18, _lerp(0.55, 0.95, u_beard / 0.18), torch.zeros_like(u_beard))
    p["beard_top"] = _lerp(0.0, 0.05, a())
    u_gl = a()
    p["glasses"] = (u_gl < 0.25).double()
    p["glass_rx"] = _lerp(0.085, 0.105, a())
    p["glass_ry"] = _lerp(0.062, 0.08, a())
    p["glass_round"] = _lerp(0.02, 0.06, a())
    p["glass_t"] = _lerp(0.008, 0.015, a())
    p["glass_col"] = _pick(torch.tensor([[0.05, 0.05, 0.05], [0.35, 0.2, 0.1], [0.7, 0.7, 0.72], [0.15, 0.15, 0.35]]), a(), torch.stack([a(), a(), a()], 1))
    p["shirt"] = u_id[:, 57:60] * 0.8 + 0.1

    j = iter(range(_N_VIEW))
    v = lambda: u_v[:, next(j)]  # noqa: E731  (u_v is looked up at call time: see static_background)
    tri = lambda: v() + v() - 1.0  # noqa: E731  triangular in [-1, 1]
    if pose not in POSES:
        raise ValueError(f"SynthFaces: pose must be one of {POSES}, got {pose!r}")
    if pose == "wild":
        p["rot"] = tri() * math.radians(30)
        p["scale"] = _lerp(0.95, 1.2, v())
        p["tx"] = _lerp(-0.10, 0.10, v())
        p["ty"] = _lerp(-0.10, 0.08, v())
        p["yaw"] = tri() * math.radians(30)
    else:  # aligned
        p["rot"] = tri() * math.radians(5)
        p["scale"] = _lerp(1.15, 1.3, v())
        p["tx"] = _lerp(-0.03, 0.03, v())
        p["ty"] = _lerp(-0.05, 0.01, v())
        p["yaw"] = tri() * math.radians(20)
    u_blink = v()
    p["eye_open"] = torch.where(u_blink < 0.12, _lerp(0.0, 0.35, u_blink / 0.12), _lerp(0.75, 1.05, v()))
    p["smile"] = _lerp(-0.008, 0.035, v())
    u_open = v()
    p["mouth_open"] = torch.where(u_open < 0.3, _lerp(0.01, 0.06, u_open / 0.3), torch.zeros_like(u_open))
    p["brow_raise"] = _lerp(-0.012, 0.02, v())
    p["light_x"] = _lerp(-0.28, 0.28, v())
    p["light_y"] = _lerp(-0.2, 0.15, v())
    p["light_0"] = _lerp(0.9, 1.08, v())
    # background: two-colour gradient + shapes + low-frequency colour noise
    if static_background and B:
        u_v = torch.stack([_uniforms(_N_VIEW, seed, split, "view", s, 0) for s in subjects])
    p["bg_a"] = torch.stack([v(), v(), v()], 1)
    p["bg_b"] = torch.stack([v(), v(), v()], 1)
    p["bg_dir"] = v() * 2 * math.pi
    k = next(j)
    n = _N_BG_SHAPES
    shapes = u_v[:, k: k + 10 * n].reshape(-1, n, 10)
    p["bg_shapes"] = shapes  # per shape: type, cx, cy, rx, ry, angle, r, g, b, alpha
    k += 10 * n
    p["bg_noise"] = u_v[:, k: k + 3 * _NOISE * _NOISE].reshape(-1, 3, _NOISE, _NOISE)
    assert k + 3 * _NOISE * _NOISE <= _N_VIEW
    out = {key: val.float() for key, val in p.items()}
    if static_pose and B:  # placement and lighting of each subject's view 0
        first = sample_params(seed, split, subjects, [0] * B, pose, static_background)
        out.update({key: first[key] for key in ("rot", "scale", "tx", "ty", "light_x", "light_y", "light_0")})
    return out


# ----------------------------------------------------------------------------------------------
# geometry shared by rendering (inverse map) and landmarks (forward map)

def _cyl_radius(p):
    return p["head_a"] * 1.25  # (B,)


def _yaw_forward(u, R, phi):
    """Template horizontal position -> yawed position (cylinder of radius R)."""
    return u * torch.cos(phi) + torch.sqrt((R * R - u * u).clamp(min=0)) * torch.sin(phi)


def _to_image(x, y, p):
    """Head frame (after yaw) -> normalised image coordinates (similarity transform)."""
    c, s = torch.cos(p["rot"]), torch.sin(p["rot"])
    k = p["scale"]
    return p["tx"] + k * (c * x - s * y), p["ty"] + k * (s * x + c * y)


def landmarks_from_params(p) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 5, 2) MAFL landmarks and (B, 3, 2) extras, (x, y) in [-1, 1], from the parameters."""
    R, phi = _cyl_radius(p)[:, None], p["yaw"][:, None]
    Rn = R * (1 + p["nose_depth"][:, None])
    ex, ey = p["eye_x"][:, None], p["eye_y"][:, None]
    mw, my = _mouth_corners(p)
    mw, my = mw[:, None], my[:, None]
    zero = torch.zeros_like(ex)
    u = torch.cat([-ex, ex, zero, -mw, mw], 1)  # (B, 5) template x
    vy = torch.cat([ey, ey, p["nose_y"][:, None], my, my], 1)
    radius = torch.cat([R, R, Rn, R, R], 1)
    x = _yaw_forward(u, radius, phi)
    bx = p["eye_x"][:, None] + 0.2 * p["brow_w"][:, None]
    by = (p["eye_y"] - p["brow_dy"] - p["brow_raise"] - p["brow_arch"])[:, None]
    xb = _yaw_forward(torch.cat([-bx, bx], 1), R, phi)
    chin = (p["head_cy"] + p["head_b"])[:, None]
    pts = torch.stack(_to_image(x, vy, _bcast(p, 1)), -1)
    extra = torch.stack(_to_image(torch.cat([xb, zero], 1), torch.cat([by, by, chin], 1), _bcast(p, 1)), -1)
    return pts, extra


def _mouth_corners(p):
    """Template (half-width, height) of the mouth corners: smiling widens and raises them."""
    return p["mouth_w"] + 0.6 * p["smile"], p["mouth_y"] - p["smile"]


def _bcast(p, ndim):
    """View of the similarity parameters with ``ndim`` trailing singleton dims."""
    return {k: p[k].reshape(-1, *([1] * ndim)) for k in ("rot", "scale", "tx", "ty")}


# ----------------------------------------------------------------------------------------------
# signed-distance helpers (negative inside); all tensors (B, H, W), parameters (B, 1, 1)

def _ellipse(x, y, rx, ry):
    """Gradient-normalised pseudo distance to an axis-aligned ellipse centred at 0."""
    qx, qy = x / rx, y / ry
    k0 = torch.sqrt(qx * qx + qy * qy)
    k1 = torch.sqrt((qx / rx) ** 2 + (qy / ry) ** 2).clamp_(min=1e-6)
    return k0 * (k0 - 1) / k1


def _circle(x, y, r):
    return torch.sqrt(x * x + y * y) - r


def _rbox(x, y, hx, hy, r):
    """Rounded box of half sizes (hx, hy), corner radius r."""
    qx, qy = x.abs() - hx + r, y.abs() - hy + r
    out = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return out + torch.maximum(qx, qy).clamp(max=0) - r


def _alpha(d, aa):
    """Coverage from a signed distance: a linear ramp one pixel (aa) wide."""
    return (0.5 - d / aa).clamp_(0, 1)


def _over(img, colour, alpha):
    """Alpha-composite a flat colour (B, 3) with coverage alpha (B, H, W) over img (B, 3, H, W)."""
    img.lerp_(colour[:, :, None, None].expand_as(img), alpha[:, None].expand_as(img))


def render_faces(p: dict, size: int = 128, clutter: bool = True, return_aux: bool = False):
    """Render a batch from :func:`sample_params` output.

    Returns:
        images (B, 3, S, S) float32 in [0, 1]; landmarks (B, 5, 2); extras (B, 3, 2); and, with
        ``return_aux``, a dict with the lighting field ``light`` (B, 1, S, S) that multiplies
        every colour and ``head`` (B, 1, S, S), the coverage of the head (skin of the face; 0 on
        background, hair, neck and ears): tells where discovered points sit.
    """
    B, S = p["head_a"].shape[0], int(size)
    pts, extra = landmarks_from_params(p)
    if B == 0:
        img = torch.zeros(0, 3, S, S)
        return (img, pts, extra, {"light": img[:, :1], "head": img[:, :1]}) if return_aux else (img, pts, extra)
    c = lambda k: p[k].reshape(B, 1, 1)  # noqa: E731
    g = torch.linspace(-1.0, 1.0, S)
    X = g.view(1, 1, S).expand(B, S, S)
    Y = g.view(1, S, 1).expand(B, S, S)

    # ---- background (rendered at half resolution: a soft, defocused look and 4x cheaper)
    img = _background(p, S, clutter)

    # ---- head frame: inverse similarity
    cr, sr, k = torch.cos(c("rot")), torch.sin(c("rot")), c("scale")
    Xt, Yt = X - c("tx"), Y - c("ty")
    x = (cr * Xt + sr * Yt) / k
    y = (cr * Yt - sr * Xt) / k
    aa = (2.0 / (S - 1)) / k  # one pixel in head units, (B, 1, 1)

    a, b, cy = c("head_a"), c("head_b"), c("head_cy")
    skin, hair = p["skin"], p["hair"]
    yaw = c("yaw")
    cyaw, syaw = torch.cos(yaw), torch.sin(yaw)

    # shirt and neck
    _over(img, p["shirt"], _alpha(_ellipse(x, y - (cy + b + 0.55), a * 2.1, torch.full_like(a, 0.6)), aa))
    neck_d = torch.maximum((x - 0.12 * syaw).abs() - a * 0.45, cy + 0.3 - y)
    _over(img, skin * 0.78, _alpha(neck_d, aa))
    # long hair behind the head
    hl = c("hair_long") * c("hair_on")
    back_d = _rbox(x, y - (cy - 0.1 + hl * 0.5), a * (1.05 + 0.25 * hl), b * 0.55 + hl * 0.55, a * 0.9)
    _over(img, hair * 0.85, _alpha(back_d, aa) * (hl > 0).float())
    # ears: the far one hides behind the head as the head turns
    for side in (-1.0, 1.0):
        ex = side * a * (1.0 - 0.25 * side * syaw)
        ear_d = _ellipse(x - ex, y - (c("eye_y") + 0.07), c("ear") * (1 + 0.6 * side * syaw).clamp(min=0.2), c("ear") * 1.6)
        _over(img, skin * 0.85, _alpha(ear_d, aa))
    # head: an egg (narrower jaw); skin shaded darker towards the silhouette
    yh = y - cy
    jaw = 1 - c("jaw") * (yh / b).clamp(0, 1) ** 2
    head_e = _ellipse(x / jaw, yh, a, b)
    head_alpha = _alpha(head_e, aa)
    _over(img, skin, head_alpha)
    rim = ((x / (a * jaw)) ** 2 + (yh / b) ** 2).clamp_(0, 1)
    shade = (rim * rim) * (0.28 * head_alpha)
    img.mul_(1 - shade[:, None])

    # ---- template frame: undo the yaw (cylinder) for face features
    R = a * 1.25
    sq = torch.sqrt((R * R - x * x).clamp(min=0))
    u = x * cyaw - sq * syaw  # template horizontal position
    au = u.abs()  # features are mirror-symmetric in the template
    Rn = R * (1 + c("nose_depth"))
    un = x * cyaw - torch.sqrt((Rn * Rn - x * x).clamp(min=0)) * syaw
    # foreshortening of the template at each pixel (du/dx): widens the AA ramp accordingly
    aa_u = aa * (cyaw + x * syaw / sq.clamp(min=1e-3)).abs().clamp(0.5, 2.0)

    # cheeks: a faint blush; eye sockets: a faint shadow
    blush = _alpha(_ellipse(au - c("eye_x") * 1.15, y - (c("nose_y") + 0.02), torch.full_like(a, 0.09), torch.full_like(a, 0.06)), torch.full_like(aa, 0.08))
    _over(img, torch.tensor([0.85, 0.35, 0.35]).expand(B, 3), blush * 0.15 * head_alpha)
    ey = c("eye_y")
    sock = _alpha(_ellipse(au - c("eye_x"), y - ey + 0.01, c("eye_w") * 1.5, c("eye_hu") * 2.4), torch.full_like(aa, 0.05))
    img.mul_(1 - (0.12 * sock)[:, None])

    # beard (drawn before nose and mouth) and moustache
    beard = c("beard")
    mw, my = (t.reshape(B, 1, 1) for t in _mouth_corners(p))
    beard_top = c("nose_y") + 0.05 + c("beard_top") + 0.9 * (x / a) ** 2 * (c("mouth_y") - c("nose_y"))
    around_mouth = -_ellipse(au, y - my - 0.01, mw * 1.25, torch.full_like(mw, 0.055))
    beard_d = torch.maximum(torch.maximum(head_e, beard_top - y), around_mouth)
    must_top = torch.maximum(c("nose_y") + 0.035, my - 0.055)  # a band above the upper lip
    must_d = torch.maximum(au - mw * (1.1 - 0.25 * ((y - must_top) / 0.05).clamp(0, 1)), torch.maximum(must_top - y, y - (my - 0.01)))
    beard_alpha = torch.maximum(_alpha(beard_d, aa), _alpha(must_d, aa_u)) * beard
    _over(img, hair, beard_alpha)

    # nose: under-shadow, tip highlight, nostrils
    ny, nw = c("nose_y"), c("nose_w")
    aun = un.abs()
    light_side = torch.sign(c("light_x") + 1e-3)
    nshadow = _alpha(_ellipse(un + 0.5 * nw * light_side, y - (ny - 0.06), nw * 0.9, torch.full_like(nw, 0.09)), torch.full_like(aa, 0.05))
    img.mul_(1 - (0.10 * nshadow)[:, None])
    under = _alpha(_ellipse(un, y - (ny + 0.022), nw * 1.5, torch.full_like(nw, 0.018)), torch.full_like(aa, 0.03))
    img.mul_(1 - (0.22 * under)[:, None])
    tip = _alpha(_ellipse(un, y - (ny - 0.012), nw * 0.8, torch.full_like(nw, 0.028)), torch.full_like(aa, 0.03))
    _over(img, (skin * 1.12).clamp(max=1), 0.5 * tip)
    nostril = _alpha(_ellipse(aun - nw * 0.75, y - (ny + 0.008), torch.full_like(nw, 0.017), torch.full_like(nw, 0.009)), aa_u)
    _over(img, skin * 0.35, nostril * 0.9)

    # mouth: lips between two curves through the corners, opening (dark) and teeth
    t = (au / mw).clamp(max=1.0)
    prof = 1 - t * t
    cen = my + c("smile") * prof  # lip line (corners raised when smiling)
    op = c("mouth_open") * prof * 0.5
    hu = c("lip_u") * (0.55 + 0.45 * prof)
    hl_ = c("lip_l") * (0.55 + 0.45 * prof)
    dy = torch.maximum(cen - op - hu - y, y - (cen + op + hl_))
    cap = 0.35 * (c("lip_u") + c("lip_l")) * 0.55
    lips_d = torch.maximum(dy, au - mw - cap)
    lips_alpha = _alpha(lips_d, aa_u)
    _over(img, p["lip"], lips_alpha)
    # upper lip a bit darker (light comes from above)
    upper = _alpha(torch.maximum(cen - op - hu - y, y - (cen - op)), aa) * lips_alpha
    img.mul_(1 - (0.15 * upper)[:, None])
    inner_d = torch.maximum((y - cen).abs() - (op + 0.0045), au - mw * 0.93)
    inner = _alpha(inner_d, aa_u)
    _over(img, p["lip"] * 0.25, inner)
    teeth_d = torch.maximum(torch.maximum(inner_d + 0.004, y - (cen - op + 0.6 * c("mouth_open") * prof)), au - mw * 0.7)
    _over(img, torch.tensor([0.92, 0.9, 0.84]).expand(B, 3), _alpha(teeth_d, aa_u) * (c("mouth_open") > 0.015).float())

    # eyes: almond (lids through the corners), iris, pupil, catch light, lash line
    du, dv = au - c("eye_x"), y - ey
    ew = c("eye_w")
    te = (du / ew).clamp(-1, 1)
    pe = 1 - te * te
    openness = c("eye_open")
    low = c("eye_hl") * pe
    up = low - (c("eye_hu") + c("eye_hl")) * pe * openness
    eye_d = torch.maximum(torch.maximum(up - dv, dv - low), du.abs() - ew)
    eye_alpha = _alpha(eye_d, aa_u)
    _over(img, torch.tensor(_SCLERA).expand(B, 3) * (0.85 + 0.15 * skin.mean(1, keepdim=True)), eye_alpha)
    ir = c("iris_r")
    dc = torch.sqrt(du * du + dv * dv)
    _over(img, p["iris"], _alpha(dc - ir, aa_u) * eye_alpha)
    _over(img, torch.tensor(_PUPIL).expand(B, 3), _alpha(dc - ir * 0.45, aa_u) * eye_alpha)
    catch = _alpha(_circle(du, dv + 0.55 * ir, ir * 0.22), aa_u) * eye_alpha
    _over(img, torch.ones(B, 3), catch * 0.85)
    lash_d = torch.maximum((dv - up).abs() - 0.006 - 0.004 * openness, du.abs() - ew * 1.05)
    _over(img, hair * 0.4, _alpha(lash_d, aa_u))
    lower_d = torch.maximum((dv - low).abs() - 0.003, du.abs() - ew * 0.9)
    img.mul_(1 - (0.25 * _alpha(lower_d, aa_u))[:, None])

    # eyebrows: arched strokes, thicker at the inner end
    bw = c("brow_w")
    bcx = c("eye_x") + 0.2 * bw
    tb = ((au - bcx) / bw).clamp(-1, 1)
    by = ey - c("brow_dy") - c("brow_raise") - c("brow_arch") * (1 - tb * tb) + c("brow_tilt") * tb
    bt = c("brow_t") * (1.15 - 0.45 * (tb + 1) / 2)
    brow_d = torch.maximum((y - by).abs() - bt / 2, (au - bcx).abs() - bw)
    _over(img, hair * 0.7 + skin * 0.12, _alpha(brow_d, aa_u) * 0.92)

    # hair on top: a cap above a hairline (with parting and sideburns)
    hv = c("hair_vol")
    cap_e = _ellipse(x, y - cy + 0.02 * hv, a * hv, b * (0.9 + 0.1 * hv))
    hairline = c("hairline") + c("hair_part") * (x / a) * 0.35 + c("hair_side") * (x / a) ** 4 * 0.9
    hairline = torch.minimum(hairline, ey - c("brow_dy") - 0.07)  # always above the brows
    hair_d = torch.maximum(cap_e, y - (cy + hairline))
    _over(img, hair, _alpha(hair_d, aa) * c("hair_on"))

    # glasses: rounded frames and a bridge (clear lenses)
    if bool((p["glasses"] > 0).any()):
        gl = c("glasses")
        gd = _rbox(du, dv + 0.005, c("glass_rx"), c("glass_ry"), c("glass_ry") * 0.5 + c("glass_round"))
        frame = _alpha(gd.abs() - c("glass_t") / 2, aa_u) * gl
        bridge_d = torch.maximum(au - (c("eye_x") - c("glass_rx") + 0.01), (dv + 0.02).abs() - c("glass_t") / 2)
        frame = torch.maximum(frame, _alpha(bridge_d, aa_u) * gl)
        _over(img, p["glass_col"], frame)

    # ---- lighting: a global shading gradient
    light = c("light_0") + c("light_x") * X + c("light_y") * Y
    img.mul_(light[:, None]).clamp_(0, 1)
    if return_aux:
        return img, pts, extra, {"light": light[:, None], "head": head_alpha[:, None]}
    return img, pts, extra


def _background(p, S, clutter):
    B = p["head_a"].shape[0]
    h = max(S // 2, 8)
    g = torch.linspace(-1.0, 1.0, h)
    X = g.view(1, 1, h).expand(B, h, h)
    Y = g.view(1, h, 1).expand(B, h, h)
    d = p["bg_dir"].view(B, 1, 1)
    t = ((torch.cos(d) * X + torch.sin(d) * Y) * 0.5 + 0.5)[:, None]
    bg = torch.lerp(p["bg_a"][:, :, None, None] * 0.8 + 0.1, p["bg_b"][:, :, None, None] * 0.8 + 0.1, t.expand(B, 3, h, h))
    if clutter:
        aa = 2.0 / (h - 1)
        sh = p["bg_shapes"]
        for i in range(sh.shape[1]):
            s = sh[:, i]
            typ, cx, cy = s[:, 0].view(B, 1, 1), (s[:, 1] * 2.4 - 1.2).view(B, 1, 1), (s[:, 2] * 2.4 - 1.2).view(B, 1, 1)
            rx, ry = (0.08 + 0.5 * s[:, 3]).view(B, 1, 1), (0.08 + 0.5 * s[:, 4]).view(B, 1, 1)
            ang = (s[:, 5] * math.pi).view(B, 1, 1)
            ca, sa = torch.cos(ang), torch.sin(ang)
            xx, yy = X - cx, Y - cy
            xr, yr = ca * xx + sa * yy, ca * yy - sa * xx
            box = _rbox(xr, yr, rx, ry * 0.5, 0.02 * torch.ones_like(rx))
            ell = _ellipse(xr, yr, rx, ry)
            stripe = yr.abs() - 0.03 - 0.05 * s[:, 4].view(B, 1, 1)
            w_ell, w_box = (typ < 0.4).float(), ((typ >= 0.4) & (typ < 0.8)).float()
            dist = ell * w_ell + box * w_box + stripe * (1 - w_ell - w_box)
            _over(bg, s[:, 6:9], _alpha(dist, aa) * (0.5 + 0.5 * s[:, 9]).view(B, 1, 1))
    noise = F.interpolate(p["bg_noise"] - 0.5, size=(h, h), mode="bicubic", align_corners=True)
    bg = bg + 0.25 * noise
    return F.interpolate(bg, size=(S, S), mode="bilinear", align_corners=True).clamp_(0, 1)


class SynthFaces(Dataset):
    """Procedural faces with exact MAFL-order landmarks; no files needed.

    Args:
        split: ``"train"``, ``"val"`` (for tuning) or ``"test"`` (disjoint subjects).
        size: image side S (default 128).
        length: number of images (default 20,000 for train, 2,000 for test).
        seed: data set seed; (seed, split, index) fixes the image.
        views_per_subject: consecutive indices ``i`` share the subject ``i // views_per_subject``.
        clutter: draw random shapes in the background (True) or only a gradient and noise.
        pose: ``"wild"`` (AFLW-like: rotation up to 30 deg, scale, shift, yaw up to 30 deg) or
            ``"aligned"`` (MAFL-like: near-fixed eyes, the face fills more of the image).
        static_background: all views of a subject share one background (video-like frames).
        static_pose: all views of a subject share the head placement (rotation, scale,
            translation) and lighting of view 0; yaw and expression still change (talking-head
            frames).

    Items are dicts ``{"image": (3, S, S) float32 in [0, 1], "landmarks": (5, 2) (x, y) in
    [-1, 1], "landmarks_extra": (3, 2) (left brow, right brow, chin), "subject": int64,
    "index": int}``. ``__getitems__`` renders a whole DataLoader batch in one vectorised call;
    :meth:`render` returns the batched dict directly.

    Example::

        ds = SynthFaces("train")
        loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2)
        batch = next(iter(loader))      # batch["image"]: (32, 3, 128, 128)
    """

    def __init__(self, split: str = "train", size: int = 128, length: int | None = None, seed: int = 0,
                 views_per_subject: int = 4, clutter: bool = True, pose: str = "wild", static_background: bool = False,
                 static_pose: bool = False):
        if split not in _SPLITS:
            raise ValueError(f"SynthFaces: split must be one of {_SPLITS}, got {split!r}")
        if int(size) < 16:
            raise ValueError(f"SynthFaces: size must be >= 16, got {size}")
        if length is None:
            length = 20000 if split == "train" else 2000
        if int(length) < 0:
            raise ValueError(f"SynthFaces: length must be >= 0, got {length}")
        if int(views_per_subject) < 1:
            raise ValueError(f"SynthFaces: views_per_subject must be >= 1, got {views_per_subject}")
        self.split, self.size, self.length, self.seed = split, int(size), int(length), int(seed)
        if pose not in POSES:
            raise ValueError(f"SynthFaces: pose must be one of {POSES}, got {pose!r}")
        self.views_per_subject, self.clutter, self.pose = int(views_per_subject), bool(clutter), pose
        self.static_background, self.static_pose = bool(static_background), bool(static_pose)

    def __len__(self) -> int:
        return self.length

    def subject_of(self, index: int) -> int:
        """Global subject id of an index: even ids in "train", odd ids in "test", negative in "val"."""
        if self.split == "val":  # negative ids: disjoint from both
            return -1 - index // self.views_per_subject
        return 2 * (index // self.views_per_subject) + (self.split == "test")

    def _check(self, indices) -> list[int]:
        out = []
        for i in indices:
            i = int(i)
            if i < 0:
                i += self.length
            if not 0 <= i < self.length:
                raise IndexError(f"SynthFaces: index {i} out of range for length {self.length}")
            out.append(i)
        return out

    def params(self, indices) -> dict:
        idx = self._check(indices)
        return sample_params(self.seed, self.split, [self.subject_of(i) for i in idx],
                             [i % self.views_per_subject for i in idx], self.pose, self.static_background,
                             self.static_pose)

    def render(self, indices, return_params: bool = False) -> dict:
        """Render a batch: dict of batched tensors (image (B,3,S,S), landmarks (B,5,2), ...)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.reshape(-1).tolist()
        idx = self._check(indices)
        tune_malloc()
        p = self.params(idx)
        img, pts, extra, aux = render_faces(p, self.size, self.clutter, return_aux=True)
        out = {
            "image": img,
            "landmarks": pts,
            "landmarks_extra": extra,
            "subject": torch.tensor([self.subject_of(i) for i in idx], dtype=torch.int64),
            "index": torch.tensor(idx, dtype=torch.int64),
        }
        if return_params:
            out["params"] = p
            out["light"], out["head"] = aux["light"], aux["head"]
        return out

    def __getitems__(self, indices) -> list[dict]:
        b = self.render(indices)
        return [{"image": b["image"][k], "landmarks": b["landmarks"][k], "landmarks_extra": b["landmarks_extra"][k],
                 "subject": b["subject"][k], "index": int(b["index"][k])} for k in range(len(b["index"]))]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


class ViewPairs(Dataset):
    """Two views of the same subject per item (like two frames of a video), for intra-subject
    pairs that differ in pose and expression, not only by a random warp [ours].

    Item ``i`` is view ``i`` of ``faces`` under ``"image"`` / ``"landmarks"`` and another view of
    the same subject (fixed per ``i``) under ``"image2"`` / ``"landmarks2"``. Use a SynthFaces
    with ``static_background=True`` so that the background does not change between the views.
    """

    def __init__(self, faces: SynthFaces):
        if not isinstance(faces, SynthFaces):
            raise TypeError(f"ViewPairs: needs a SynthFaces data set, got {type(faces).__name__}")
        if faces.views_per_subject < 2:
            raise ValueError("ViewPairs: the data set needs views_per_subject >= 2")
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces)

    def partner(self, index: int) -> int:
        V, n = self.faces.views_per_subject, len(self.faces)
        first = index - index % V
        views = min(V, n - first)  # the last subject may have fewer views
        if views < 2:
            return index
        offset = 1 + _hash("partner", self.faces.seed, index) % (views - 1)
        return first + (index % V + offset) % views

    def __getitems__(self, indices) -> list[dict]:
        idx = self.faces._check(indices)
        a = self.faces.render(idx)
        b = self.faces.render([self.partner(i) for i in idx])
        return [{"image": a["image"][k], "landmarks": a["landmarks"][k], "image2": b["image"][k],
                 "landmarks2": b["landmarks"][k], "index": idx[k]} for k in range(len(idx))]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]
