"""Networks, the training step's wiring, and the losses (fastlmk.training.model, fastlmk.training.losses)."""

import pytest
import torch
import torch.nn.functional as F

import fastlmk
from fastlmk.training.losses import PERCEPTUAL, ReconstructionLoss, VGG16Features, laplacian_pyramid, masked_mse
from fastlmk.training.model import Detector, Generator, LandmarkAutoencoder, derangement

torch.set_num_threads(1)


def _images(B, S, seed=0):
    return torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,S,width", [("conv", 32, 8), ("conv", 20, 8), ("hourglass", 64, 16)])
def test_detector_shapes(arch, S, width):
    K = 5
    det = Detector(K, arch, width, image_size=S, backend="reference")
    out = det(_images(3, S))
    h = S // 4
    assert out.heatmaps.shape == (3, K, h, h) and out.maps.shape == (3, K, h, h)
    assert out.points.shape == (3, K, 2)
    assert out.points.abs().max() <= 1.0
    assert out.maps.max() <= 1.0 + 1e-6 and out.maps.min() >= 0
    # the maps are G(mu): Gaussians of std 0.5 px of the h x h map, centred on the points
    assert det.std == pytest.approx(0.5 * 2 / (h - 1))
    ref = fastlmk.reference.gaussian_heatmaps(out.points, h, h, det.std)
    torch.testing.assert_close(out.maps, ref)
    torch.testing.assert_close(out.points, fastlmk.reference.soft_argmax(out.heatmaps, 0.1, "spatial"))


def test_detector_marginal_mode():
    det = Detector(4, "conv", 8, image_size=32, temperature=0.5, std=1.0, backend="reference", mode="marginal")
    out = det(_images(2, 32))
    torch.testing.assert_close(out.points, fastlmk.reference.soft_argmax(out.heatmaps, 0.5, "marginal"))
    assert det.std == pytest.approx(1.0 * 2 / (8 - 1))


def test_detector_bad_arguments():
    with pytest.raises(ValueError, match="num_landmarks"):
        Detector(0, "conv", 8, 32)
    with pytest.raises(ValueError, match="arch"):
        Detector(4, "resnet", 8, 32)
    with pytest.raises(ValueError, match="mode"):
        Detector(4, "conv", 8, 32, mode="argmax")
    with pytest.raises(ValueError, match="multiple of 64"):
        Detector(4, "hourglass", 16, 96)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\)"):
        Detector(4, "conv", 8, 32)(torch.rand(2, 3, 64, 64))


def test_generator_shapes_and_range():
    gen = Generator(num_landmarks=4, width=8, num_res=2)
    img = gen(_images(2, 32), torch.rand(2, 4, 8, 8))
    assert img.shape == (2, 3, 32, 32)
    assert img.min() >= 0 and img.max() <= 1
    with pytest.raises(ValueError, match="S/4"):
        gen(_images(2, 32), torch.rand(2, 4, 16, 16))
    with pytest.raises(ValueError, match="num_landmarks"):
        Generator(num_landmarks=0)


def test_derangement():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 7, 32):
        for _ in range(20):
            a = derangement(n, g)
            assert sorted(a.tolist()) == list(range(n))
            assert not (a == torch.arange(n)).any()
    assert torch.equal(derangement(9, torch.Generator().manual_seed(5)), derangement(9, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(1)


def test_auxiliary_pass_by_indexing_is_exact():
    """D(x[a]) == D(x)[a] in training mode (BatchNorm statistics do not depend on the order),
    values and parameter gradients: the third detector pass may be done by indexing."""
    det = Detector(4, "conv", 8, 32, backend="reference").double().train()  # float64: no summation-order noise
    x = _images(5, 32).double()
    a = derangement(5, torch.Generator().manual_seed(1))
    w = torch.randn(5, 4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def grads(points):
        det.zero_grad()
        (points * w).sum().backward()
        return [p.grad.clone() for p in det.parameters()]

    p_sep = det(x[a]).points
    g_sep = grads(p_sep)
    p_idx = det(x).points[a]
    g_idx = grads(p_idx)
    torch.testing.assert_close(p_idx, p_sep, rtol=1e-10, atol=1e-12)
    for gs, gi in zip(g_sep, g_idx):
        torch.testing.assert_close(gi, gs, rtol=1e-8, atol=1e-12)


def test_inter_intra_wiring():
    """In eval mode (BatchNorm per sample), every output equals the composition that
    method.md section 2 names."""
    K, S = 3, 32
    D = Detector(K, "conv", 8, S, backend="reference")
    P = Generator(K, 8, 1)
    model = LandmarkAutoencoder(D, P, "inter-intra").eval()
    x, xp = _images(4, S, 0), _images(4, S, 1)
    a = torch.tensor([2, 3, 1, 0])
    with torch.no_grad():
        out = model(x, xp, a)
        mu, mu_p, mu_a = D(x), D(xp), D(x[a])
        torch.testing.assert_close(out["mu"], mu.points)
        torch.testing.assert_close(out["mu_prime"], mu_p.points)
        torch.testing.assert_close(out["mu_aux"], mu_a.points)
        x_t, x_tp = P(x, mu_a.maps), P(xp, mu_a.maps)
        torch.testing.assert_close(out["x_tilde"], x_t)
        torch.testing.assert_close(out["x_tilde_prime"], x_tp)
        torch.testing.assert_close(out["x_hat_prime"], P(x_t, mu_p.maps))  # forward path, back to x'
        torch.testing.assert_close(out["x_hat"], P(x_tp, mu.maps))  # backward path, back to x
        assert [(t[2], t[1] is x) for t in out["targets"]] == [("x", True), ("x_prime", False)]
        intra = LandmarkAutoencoder(D, P, "intra").eval()(x, xp)
        torch.testing.assert_close(intra["x_hat_prime"], P(x, mu_p.maps))
    with pytest.raises(ValueError, match="method"):
        LandmarkAutoencoder(D, P, "cycle")


@pytest.mark.parametrize("method", ["inter-intra", "intra"])
def test_few_steps_on_a_fixed_batch_decrease_the_loss(method):
    torch.manual_seed(0)
    K, S = 4, 32
    model = LandmarkAutoencoder(Detector(K, "conv", 8, S, backend="reference"), Generator(K, 8, 1), method)
    crit = ReconstructionLoss("laplacian")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.9))
    x, xp = _images(4, S, 3), _images(4, S, 4)
    a = torch.tensor([1, 0, 3, 2])
    losses = []
    for _ in range(20):
        out = model(x, xp, a)
        loss = crit(out["targets"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.85 * losses[0], losses


# ---------------------------------------------------------------------------------- losses
def test_masked_mse():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    torch.testing.assert_close(masked_mse(x, y, torch.ones(2, 1, 8, 8)), F.mse_loss(x, y))
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    y2 = y.clone()
    y2[..., :2, :] = 5.0  # outside the mask: ignored
    torch.testing.assert_close(masked_mse(x, y2, mask), F.mse_loss(x[..., 2:6, 2:6], y[..., 2:6, 2:6]))


def _vgg_state_dict(path):
    """A randomly initialised torchvision-vgg16-like state dict (all 13 convs + classifier)."""
    g = torch.Generator().manual_seed(0)
    sd, c_in = {}, 3
    idx = 0
    for block in ([64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]):
        for c in block:
            sd[f"features.{idx}.weight"] = torch.randn(c, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
            sd[f"features.{idx}.bias"] = torch.randn(c, generator=g) * 0.01
            c_in, idx = c, idx + 2
        idx += 1  # the max-pool
    sd["classifier.0.weight"], sd["classifier.0.bias"] = torch.randn(4, 8), torch.zeros(4)
    torch.save(sd, path)
    return sd


def test_vgg16_features_load_and_match_a_functional_reference(tmp_path):
    sd = _vgg_state_dict(tmp_path / "vgg16.pth")
    net = VGG16Features.from_file(str(tmp_path / "vgg16.pth"))
    x = _images(1, 32)
    feats = net(x)
    assert [f.shape[1:] for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    # relu1_2 and relu2_2 computed by hand from the state dict
    h = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    conv = lambda h, i: F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))  # noqa: E731
    r12 = conv(conv(h, 0), 2)
    r22 = conv(conv(F.max_pool2d(r12, 2), 5), 7)
    torch.testing.assert_close(feats[0], r12, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats[1], r22, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in net.parameters())
    loss = ReconstructionLoss("vgg", str(tmp_path / "vgg16.pth"))
    y = _images(1, 32, 1).requires_grad_()
    out = loss([(y, x, "x")])
    out["loss"].backward()
    assert out["perceptual"] > 0 and torch.isfinite(y.grad).all()


def test_vgg16_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VGG16Features.from_file(str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        VGG16Features.from_file(str(tmp_path / "junk.pth"))
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "part.pth")
    with pytest.raises(ValueError, match="missing"):
        VGG16Features.from_file(str(tmp_path / "part.pth"))
    with pytest.raises(ValueError, match="vgg-weights"):
        ReconstructionLoss("vgg")


@pytest.mark.parametrize("kind", [k for k in PERCEPTUAL if k != "vgg"])
def test_perceptual_fallbacks(kind):
    crit = ReconstructionLoss(kind)
    x = _images(2, 32)
    mask = torch.ones(2, 1, 32, 32)
    same = crit([(x.clone(), x, "x")], {"x": mask})
    assert same["loss"].item() == pytest.approx(0.0, abs=1e-6)
    y = _images(2, 32, 1).requires_grad_()
    out = crit([(y, x, "x")], {"x": mask})
    out["loss"].backward()
    assert torch.isfinite(y.grad).all()
    assert (out["perceptual"] > 0) == (kind != "none")
    # a zero mask over the bottom half ignores differences there
    m = mask.clone()
    m[..., 16:, :] = 0
    y2 = x.clone()
    y2[..., 20:, :] = 1 - y2[..., 20:, :]
    assert crit([(y2, x, "x")], {"x": m})["loss"].item() < 0.2 * crit([(y2, x, "x")], {"x": mask})["loss"].item()


@pytest.mark.parametrize("shape,levels", [((2, 3, 64, 64), 4), ((2, 3, 32, 32), 3), ((1, 3, 16, 16), 2),
                                          ((2, 1, 48, 40), 3), ((1, 2, 64, 24), 4), ((1, 3, 20, 20), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_laplacian_pyramid_matches_kornia(shape, levels, dtype):
    """The default perceptual fallback was computed with kornia's build_laplacian_pyramid; the
    plain-torch pyramid that replaced it must give the same bands (and so the same loss),
    including kornia's padding of sides that are not powers of two."""
    kornia = pytest.importorskip("kornia")
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ours, theirs = laplacian_pyramid(x, levels), kornia.geometry.transform.build_laplacian_pyramid(x, levels)
    assert len(ours) == len(theirs) == levels
    tol = dict(rtol=0, atol=1e-6) if dtype == torch.float32 else dict(rtol=0, atol=1e-12)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **tol)


def test_laplacian_loss_value_is_unchanged_without_kornia():
    """ReconstructionLoss("laplacian") (the default run's) equals the formula with kornia's pyramid."""
    kornia = pytest.importorskip("kornia")
    from fastlmk.training.losses import masked_mean

    x, y = _images(4, 64), _images(4, 64, 1).requires_grad_()
    mask = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    got = ReconstructionLoss("laplacian")([(y, x, "x")], {"x": mask})["perceptual"]
    build = kornia.geometry.transform.build_laplacian_pyramid
    want = sum(masked_mean((a - b).abs(), mask) for a, b in zip(build(y, 4), build(x, 4)))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    g_got, = torch.autograd.grad(got, y)
    g_want, = torch.autograd.grad(want, y)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-9)
