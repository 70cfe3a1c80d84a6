"""tps_fit, random_tps, identity_tps (pure torch): interpolation, affine reproduction,
regularisation limit, gradients, seeding, and the statistics of IMM's random warps."""

import math

import pytest
import torch

import fastlmk
from fastlmk import TPS, reference
from conftest import DTYPES, assert_close, make_generator


def _evaluate(tps, points):
    """f(points) with the reference (B, P, 2)."""
    return reference.tps_transform_points(points, tps.ctrl, tps.coef)


def _src_dst(Bc, B, N, seed=0):
    g = make_generator(seed)
    src = torch.rand(Bc, N, 2, generator=g, dtype=torch.float64) * 2 - 1
    dst = src + 0.1 * torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    return src, dst


# --- tps_fit ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("Bc,B,N", [(1, 1, 3), (1, 4, 10), (3, 3, 7), (2, 2, 100)])
def test_fit_maps_source_onto_target(Bc, B, N, dtype):
    src, dst = _src_dst(Bc, B, N)
    src, dst = src.to(dtype), dst.to(dtype)
    t = fastlmk.tps_fit(src, dst)
    assert isinstance(t, TPS)
    assert t.ctrl.shape == (Bc, N, 2) and t.coef.shape == (B, N + 3, 2)
    assert t.ctrl.dtype == dtype and t.coef.dtype == dtype
    assert torch.equal(t.ctrl, src)
    # float32: the solve of an (N+3)^2 system with condition number ~1e3..1e5
    tol = 1e-9 if dtype == torch.float64 else (2e-3 if N == 100 else 2e-4)
    assert_close(_evaluate(t, src.expand(B, N, 2)), dst, atol=tol, rtol=0)
    # side conditions of the TPS: sum_i w_i = 0 and sum_i w_i c_i = 0 (bounded bending energy)
    w = t.weights
    P = torch.cat([torch.ones_like(src[..., :1]), src], dim=-1).expand(B, N, 3)  # (B, N, 3)
    assert_close(P.transpose(1, 2) @ w, torch.zeros(B, 3, 2, dtype=dtype), atol=tol * 10, rtol=0, name="P^T w")


def test_fit_reproduces_affine_maps_exactly():
    src, _ = _src_dst(1, 1, 12, seed=1)
    A = torch.tensor([[[1.1, -0.3], [0.2, 0.9]], [[0.8, 0.1], [-0.4, 1.2]]], dtype=torch.float64)  # (B, 2, 2)
    t0 = torch.tensor([[0.05, -0.1], [0.2, 0.0]], dtype=torch.float64)  # (B, 2)
    dst = src @ A.transpose(1, 2) + t0[:, None]
    t = fastlmk.tps_fit(src, dst)
    assert_close(t.weights, torch.zeros(2, 12, 2, dtype=torch.float64), atol=1e-10, rtol=0, name="weights")
    assert_close(t.affine, torch.cat([t0[:, None], A.transpose(1, 2)], dim=1), atol=1e-10, rtol=0, name="affine")


def test_shared_and_per_sample_control_points_agree():
    src, dst = _src_dst(1, 5, 9, seed=2)
    shared = fastlmk.tps_fit(src, dst)
    per = fastlmk.tps_fit(src.expand(5, -1, -1).clone(), dst)
    assert shared.ctrl.shape[0] == 1 and per.ctrl.shape[0] == 5
    assert_close(shared.coef, per.coef, atol=1e-10, rtol=1e-10)


def test_regularization_smooths_towards_the_affine_least_squares_fit():
    src, dst = _src_dst(1, 2, 15, seed=3)
    exact = fastlmk.tps_fit(src, dst)
    mild = fastlmk.tps_fit(src, dst, regularization=0.1)
    # interpolation is no longer exact, and the bending weights shrink
    assert (_evaluate(mild, src.expand(2, -1, -1)) - dst).abs().max() > 1e-3
    assert mild.weights.norm() < exact.weights.norm()
    # lambda -> infinity: w -> 0 and the affine part -> least squares of dst on [1, x, y]
    stiff = fastlmk.tps_fit(src, dst, regularization=1e8)
    P = torch.cat([torch.ones_like(src[..., :1]), src], dim=-1).expand(2, -1, -1)  # (B, N, 3)
    lstsq = torch.linalg.lstsq(P, dst).solution  # (B, 3, 2)
    assert_close(stiff.affine, lstsq, atol=1e-6, rtol=0, name="affine part")
    assert stiff.weights.abs().max() < 1e-7


def test_fit_gradcheck():
    src, dst = _src_dst(2, 2, 5, seed=4)
    src.requires_grad_()
    dst.requires_grad_()
    probe = torch.rand(2, 3, 2, generator=make_generator(5), dtype=torch.float64) * 2 - 1

    def f(s, d):
        t = fastlmk.tps_fit(s, d, regularization=0.01)
        return _evaluate(t, probe)

    assert torch.autograd.gradcheck(f, (src, dst))


def test_fit_promotes_mixed_dtypes():
    src, dst = _src_dst(1, 2, 6)
    t = fastlmk.tps_fit(src.float(), dst)
    assert t.coef.dtype == torch.float64


# --- identity_tps ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_identity_tps(dtype):
    t = fastlmk.identity_tps(3, grid_size=5, dtype=dtype)
    assert t.ctrl.shape == (1, 25, 2) and t.coef.shape == (3, 28, 2)
    assert t.ctrl.dtype == dtype and t.coef.dtype == dtype
    # the lattice spans [-1, 1]^2 with x fastest
    assert_close(t.ctrl[0, :5, 0], torch.linspace(-1, 1, 5, dtype=dtype), atol=0, rtol=0)
    assert_close(t.ctrl[0, ::5, 1], torch.linspace(-1, 1, 5, dtype=dtype), atol=0, rtol=0)
    p = torch.rand(3, 11, 2, generator=make_generator(0), dtype=torch.float64).to(dtype) * 3 - 1.5
    assert_close(_evaluate(t, p), p, atol=0, rtol=0)


# --- random_tps ------------------------------------------------------------------------------
def test_random_tps_is_reproducible_with_a_seeded_generator():
    a = fastlmk.random_tps(4, generator=make_generator(123))
    b = fastlmk.random_tps(4, generator=make_generator(123))
    c = fastlmk.random_tps(4, generator=make_generator(124))
    assert torch.equal(a.ctrl, b.ctrl) and torch.equal(a.coef, b.coef)
    assert not torch.allclose(a.coef, c.coef)
    # the global RNG does not interfere with a seeded generator
    torch.manual_seed(0)
    d = fastlmk.random_tps(4, generator=make_generator(123))
    assert torch.equal(a.coef, d.coef)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_random_tps_shapes_and_dtype(dtype):
    t = fastlmk.random_tps(5, grid_size=6, generator=make_generator(0), dtype=dtype)
    assert t.ctrl.shape == (1, 36, 2) and t.coef.shape == (5, 39, 2)
    assert t.ctrl.dtype == dtype and t.coef.dtype == dtype
    assert t.batch_size == 5 and t.num_ctrl == 36
    assert_close(t.ctrl, fastlmk.identity_tps(1, 6, dtype=dtype).ctrl, atol=1e-7, rtol=0)  # 1 ulp: linspace in f64 vs f32
    assert fastlmk.random_tps(0, generator=make_generator(0)).coef.shape == (0, 103, 2)


def test_random_tps_with_zero_stds_is_the_identity():
    t = fastlmk.random_tps(3, grid_size=5, rotation_std=0.0, scale_std=0.0, translation_std=0.0, warp_std=0.0,
                           extra_warp_prob=1.0, extra_warp_std=(0.0, 0.0), generator=make_generator(0),
                           dtype=torch.float64)
    ident = fastlmk.identity_tps(3, 5, dtype=torch.float64)
    assert_close(t.coef, ident.coef, atol=1e-12, rtol=0)
    # and tiny stds give a warp that moves no point of [-1, 1]^2 by more than a few stds
    t = fastlmk.random_tps(8, grid_size=5, rotation_std=1e-4, scale_std=1e-6, translation_std=1e-6, warp_std=1e-6,
                           extra_warp_std=(1e-6, 1e-6), generator=make_generator(1), dtype=torch.float64)
    p = torch.rand(8, 50, 2, generator=make_generator(2), dtype=torch.float64) * 2 - 1
    assert (_evaluate(t, p) - p).abs().max() < 2e-5


def test_random_tps_maps_the_lattice_to_the_displaced_lattice():
    """The spline interpolates its control lattice: with only a translation, f(c_i) = c_i + t."""
    t = fastlmk.random_tps(6, grid_size=4, rotation_std=0.0, scale_std=0.0, translation_std=0.2, warp_std=0.0,
                           extra_warp_prob=0.0, generator=make_generator(3), dtype=torch.float64)
    c = t.ctrl.expand(6, -1, -1)
    shift = _evaluate(t, c) - c  # (B, N, 2), constant over the lattice
    assert_close(shift, shift[:, :1].expand_as(shift), atol=1e-12, rtol=0)
    assert_close(t.weights, torch.zeros_like(t.weights), atol=1e-12, rtol=0)


def test_random_tps_parameter_statistics():
    """Sample statistics over a large batch match IMM's recipe (method.md section 5)."""
    n = 4000
    g = make_generator(4)
    # rotation + scale only: the affine matrix is scale * R(theta)
    t = fastlmk.random_tps(n, grid_size=2, rotation_std=5.0, scale_std=0.1, translation_std=0.0, warp_std=0.0,
                           extra_warp_prob=0.0, generator=g, dtype=torch.float64)
    A = t.affine[:, 1:]  # (n, 2, 2), rows a_x, a_y: f(x, y) = x a_x + y a_y (+ a_0)
    scale = torch.sqrt(torch.linalg.det(A))
    theta = torch.atan2(A[:, 0, 1], A[:, 0, 0])  # a_x = scale * (cos, sin)
    assert_close(A[:, 0, 0], A[:, 1, 1], atol=1e-12, rtol=0, name="a_x.x == a_y.y")
    assert_close(A[:, 0, 1], -A[:, 1, 0], atol=1e-12, rtol=0, name="a_x.y == -a_y.x")
    assert abs(scale.mean().item() - 1.0) < 0.01 and abs(scale.std().item() - 0.1) < 0.01
    assert abs(theta.mean().item()) < math.radians(0.5) and abs(theta.std().item() - math.radians(5.0)) < math.radians(0.5)
    # translation only
    t = fastlmk.random_tps(n, grid_size=2, rotation_std=0.0, scale_std=0.0, translation_std=0.1, warp_std=0.0,
                           extra_warp_prob=0.0, generator=g, dtype=torch.float64)
    a0 = t.affine[:, 0]  # (n, 2)
    assert a0.mean(0).abs().max() < 0.01 and (a0.std(0) - 0.1).abs().max() < 0.01
    # lattice jitter only: f(c) - c has std warp_std; with extra_warp_prob = 1 the extra std is added
    for extra_prob, expected in [(0.0, 0.02), (1.0, math.sqrt(0.02**2 + 0.05**2))]:
        t = fastlmk.random_tps(n // 4, grid_size=3, rotation_std=0.0, scale_std=0.0, translation_std=0.0,
                               warp_std=0.02, extra_warp_prob=extra_prob, extra_warp_std=(0.05, 0.05), generator=g,
                               dtype=torch.float64)
        c = t.ctrl.expand(n // 4, -1, -1)
        d = _evaluate(t, c) - c
        assert abs(d.std().item() - expected) < 0.05 * expected, (extra_prob, d.std().item(), expected)
