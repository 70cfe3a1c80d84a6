"""TPSPairs: views are the random_tps/tps_warp warps of the input; smooth masks, 0 where padded."""

import pytest
import torch

import fastlmk
from fastlmk import reference
from fastlmk.data import TPSPairs, border_mask

# without compiled CPU kernels the ops fall back to the reference (and say so): fine here
pytestmark = pytest.mark.filterwarnings("ignore:.*falling back to the.*reference:RuntimeWarning")


def _images(B=3, S=48):
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, 3, S, S, generator=g)


def test_views_are_warps_by_the_returned_splines():
    imgs = _images()
    pairs = TPSPairs()(imgs, generator=torch.Generator().manual_seed(1))
    assert pairs.x.shape == imgs.shape and pairs.x_prime.shape == imgs.shape
    assert pairs.tps.coef.shape == (3, 103, 2) and pairs.tps.ctrl.shape == (1, 100, 2)
    torch.testing.assert_close(pairs.x, fastlmk.tps_warp(imgs, pairs.tps), atol=1e-5, rtol=0)
    torch.testing.assert_close(pairs.x_prime, fastlmk.tps_warp(imgs, pairs.tps_prime), atol=1e-5, rtol=0)
    # against the readable oracle too
    ref = reference.tps_warp(imgs, pairs.tps.ctrl, pairs.tps.coef, None, "zeros")
    torch.testing.assert_close(pairs.x, ref, atol=1e-4, rtol=0)
    # the two views really differ, and neither is the identity
    assert (pairs.x - pairs.x_prime).abs().mean() > 0.05
    assert (pairs.x - imgs).abs().mean() > 0.05


def test_masks_smooth_in_unit_range_and_zero_where_padded():
    S = 64
    imgs = _images(4, S)
    maker = TPSPairs(translation_std=0.15, mask_margin=0.1)
    pairs = maker(imgs, generator=torch.Generator().manual_seed(2))
    grid = reference.output_grid(S, S).reshape(1, -1, 2).expand(4, -1, -1)  # output pixel centres
    for mask, tps in ((pairs.mask, pairs.tps), (pairs.mask_prime, pairs.tps_prime)):
        assert mask.shape == (4, 1, S, S)
        assert mask.min() >= 0 and mask.max() <= 1
        # the mask is the warp of the smooth border mask
        torch.testing.assert_close(mask, fastlmk.tps_warp(border_mask(S, S, 0.1).expand(4, 1, S, S), tps), atol=1e-5, rtol=0)
        src = fastlmk.tps_transform_points(grid, tps).reshape(4, S, S, 2)  # where each output pixel samples
        outside = (src.abs() > 1).any(-1)
        assert outside.any(), "draw a warp that pads, or the test says nothing"
        assert (mask[:, 0][outside] == 0).all()
        deep_inside = (src.abs() < 0.85).all(-1)
        assert (mask[:, 0][deep_inside] > 0.99).all()
        # smooth: no jump between neighbours (a hard 0/1 mask would jump by 1)
        jump = max((mask[..., 1:, :] - mask[..., :-1, :]).abs().max(), (mask[..., 1:] - mask[..., :-1]).abs().max())
        assert jump < 0.7
        assert ((mask > 0.05) & (mask < 0.95)).any()  # there is a ramp


def test_border_mask():
    m = border_mask(33, 21, margin=0.2)
    assert m.shape == (1, 1, 33, 21)
    assert (m[..., 0, :] == 0).all() and (m[..., :, -1] == 0).all()
    assert m[..., 16, 10] == 1 and ((m > 0) & (m < 1)).any()
    hard = border_mask(8, 8, margin=0.0)
    assert hard[0, 0, 0].sum() == 0 and hard[0, 0, 1:-1, 1:-1].min() == 1


def test_seedable_and_validated():
    imgs = _images()
    maker = TPSPairs()
    a = maker(imgs, generator=torch.Generator().manual_seed(5))
    b = maker(imgs, generator=torch.Generator().manual_seed(5))
    c = maker(imgs, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.x, b.x) and torch.equal(a.mask_prime, b.mask_prime) and torch.equal(a.tps.coef, b.tps.coef)
    assert not torch.equal(a.tps.coef, c.tps.coef)
    with pytest.raises(ValueError, match="images"):
        maker(imgs[0])
    with pytest.raises(TypeError, match="floating"):
        maker((imgs * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="mask_margin"):
        TPSPairs(mask_margin=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_images_device():
    imgs = _images().cuda()
    p = TPSPairs()(imgs, generator=torch.Generator(device="cuda").manual_seed(0))
    assert p.x.is_cuda and p.mask.is_cuda and p.tps.coef.is_cuda
    torch.testing.assert_close(p.x, fastlmk.tps_warp(imgs, p.tps), atol=1e-4, rtol=0)
