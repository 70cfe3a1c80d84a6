"""SynthFaces: shapes, determinism, split disjointness, landmarks on the drawn features, loaders."""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from fastlmk.data import SynthFaces, build_dataset
from fastlmk.data.synth import _PUPIL, sample_params

S = 64  # small images keep the suite fast; geometry is resolution independent


def _sample(img, pts):
    """Bilinear colour of img (B,3,H,W) at points (B,K,2) in [-1,1] (align_corners) -> (B,K,3)."""
    return F.grid_sample(img, pts[:, :, None], mode="bilinear", align_corners=True)[..., 0].permute(0, 2, 1)


def test_shapes_ranges_and_item_keys():
    ds = SynthFaces("train", size=S, length=40)
    b = ds.render(range(8))
    assert b["image"].shape == (8, 3, S, S) and b["image"].dtype == torch.float32
    assert 0 <= b["image"].min() and b["image"].max() <= 1
    assert b["landmarks"].shape == (8, 5, 2) and b["landmarks"].dtype == torch.float32
    assert b["landmarks"].abs().max() < 0.95  # all landmarks well inside the frame
    assert b["landmarks_extra"].shape == (8, 3, 2)
    assert b["subject"].dtype == torch.int64
    item = ds[5]
    assert set(item) == {"image", "landmarks", "landmarks_extra", "subject", "index"}
    assert item["index"] == 5 and item["image"].shape == (3, S, S)
    assert len(ds) == 40 and len(SynthFaces("test")) == 2000
    # left eye left of right eye, eyes above nose above mouth (rotation is at most 30 degrees)
    lm = b["landmarks"]
    d = lm[:, 1] - lm[:, 0]
    ang = torch.atan2(d[:, 1], d[:, 0])
    assert ang.abs().max() < torch.deg2rad(torch.tensor(35.0))
    # not a blank or constant image: faces have contrast
    assert (b["image"].flatten(1).std(1) > 0.05).all()


def test_deterministic_batched_equals_single_and_seed_changes_images():
    a = SynthFaces("train", size=S, length=100, seed=3)
    b = SynthFaces("train", size=S, length=100, seed=3)
    batch = a.render([7, 42, 99])
    for k, i in enumerate([7, 42, 99]):
        item = b[i]
        torch.testing.assert_close(batch["image"][k], item["image"], atol=1e-6, rtol=0)
        torch.testing.assert_close(batch["landmarks"][k], item["landmarks"])
    other = SynthFaces("train", size=S, length=100, seed=4).render([7])
    assert (other["image"][0] - batch["image"][0]).abs().mean() > 0.02
    try:
        a[100]
    except IndexError:
        pass
    else:
        raise AssertionError("index out of range must raise IndexError")


def test_subjects_views_and_split_disjointness():
    tr = SynthFaces("train", size=S, length=400, views_per_subject=4)
    te = SynthFaces("test", size=S, length=400, views_per_subject=4)
    s_tr = {tr.subject_of(i) for i in range(len(tr))}
    s_te = {te.subject_of(i) for i in range(len(te))}
    assert len(s_tr) == 100 and len(s_te) == 100 and not (s_tr & s_te)
    # identity parameters: equal across the views of one subject, different across subjects/splits
    p = tr.params([0, 1, 2, 3, 4])
    q = te.params([0])
    for key in ("head_a", "eye_x", "mouth_w", "nose_y", "skin", "iris", "hair"):
        assert torch.equal(p[key][0], p[key][3]), key
    assert not torch.allclose(p["skin"][0], p["skin"][4]) and not torch.allclose(p["skin"][0], q["skin"][0])
    assert not torch.allclose(p["head_a"][0], q["head_a"][0])
    # view parameters differ between views of a subject
    assert not torch.allclose(p["rot"][0], p["rot"][1]) and not torch.allclose(p["yaw"][0], p["yaw"][1])
    # train and test images of the same index differ
    assert (tr.render([0])["image"] - te.render([0])["image"]).abs().mean() > 0.02


def test_parameter_ranges_cover_the_spec():
    p = sample_params(0, "train", range(0, 800, 2), [0] * 400)
    assert p["rot"].abs().max() > 0.7 * 0.5236 and p["rot"].abs().max() <= 0.5236 + 1e-6  # up to 30 degrees
    assert p["yaw"].abs().max() > 0.7 * 0.5236
    assert (p["eye_open"] < 0.35).any() and (p["mouth_open"] > 0).any() and (p["glasses"] > 0).any()
    assert (p["beard"] > 0).any() and (p["hair_long"] > 0).any()


def test_landmarks_sit_on_the_drawn_features():
    """Colour at the landmarks: eye centre = pupil/iris, mouth corner = lip; skin a bit further out."""
    ds = SynthFaces("train", size=128, length=4000)
    b = ds.render(range(0, 4000, 80), return_params=True)  # 50 images of 50 subjects
    p, img, lm = b["params"], b["image"], b["landmarks"]
    light = _sample(b["light"], lm)  # (B, 5, 1): the multiplicative lighting at each landmark
    col = _sample(img, lm) / light  # unlit colour at the landmarks, (B, 5, 3)
    skin, lip, iris = p["skin"], p["lip"], p["iris"]
    pupil = torch.tensor(_PUPIL).expand_as(iris)

    def dist(c, ref):
        return (c - ref).norm(dim=-1)

    def dist_seg(c, a, b):  # distance to the colour segment [a, b] (anti-aliased mixtures of a and b)
        t = (((c - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1).clamp(min=1e-8)).clamp(0, 1)
        return dist(c, a + t[:, None] * (b - a))

    open_eyes = p["eye_open"] > 0.7
    assert open_eyes.sum() > 30
    for k in (0, 1):
        d_eye = dist_seg(col[:, k], pupil, iris)  # the pupil is ~1-2 px wide: the sample mixes both
        ok = d_eye < dist(col[:, k], skin)
        assert ok[open_eyes].all(), f"eye {k}: {ok[open_eyes].float().mean():.2f} of open eyes show iris/pupil colour"
        assert (d_eye[open_eyes] < 0.2).float().mean() > 0.9
    for k in (3, 4):
        d_lip = dist_seg(col[:, k], lip * 0.25, lip)  # lip, or its mixture with the dark lip line
        assert (d_lip < dist(col[:, k], skin)).all(), f"mouth corner {k} not on the lips"
    # a few pixels outward from each mouth corner (along the mouth axis) is skin, not lip
    axis = F.normalize(lm[:, 4] - lm[:, 3], dim=-1)
    step = 5 * 2 / 127  # 5 pixels
    out_pts = torch.stack([lm[:, 3] - step * axis, lm[:, 4] + step * axis], 1)
    col_out = _sample(img, out_pts) / _sample(b["light"], out_pts)
    no_beard = p["beard"] == 0
    for k in (0, 1):  # the surroundings are more skin-like than the corner itself
        closer_skin = dist(col_out[:, k], skin) < dist(col[:, 3 + k], skin)
        assert closer_skin[no_beard].float().mean() > 0.9
    # eye centres are darker than the sclera around them: sample 1.3 iris radii to the side
    eye_axis = F.normalize(lm[:, 1] - lm[:, 0], dim=-1)
    side = (p["iris_r"] * 1.5 * p["scale"])[:, None] * eye_axis
    sclera_pts = torch.stack([lm[:, 0] + side, lm[:, 1] - side], 1)
    lum_side = _sample(img, sclera_pts).mean(-1)
    lum_eye = _sample(img, lm[:, :2]).mean(-1)
    assert (lum_eye < lum_side)[open_eyes].float().mean() > 0.9


def test_dataloader_two_workers_uses_batched_rendering():
    ds = SynthFaces("train", size=32, length=24)
    loader = DataLoader(ds, batch_size=6, num_workers=2)
    got = torch.cat([b["image"] for b in loader])
    lms = torch.cat([b["landmarks"] for b in loader])
    ref = ds.render(range(24))
    torch.testing.assert_close(got, ref["image"], atol=1e-6, rtol=0)
    torch.testing.assert_close(lms, ref["landmarks"])


def test_distributed_sampler_shards():
    ds = build_dataset("synth", split="train", size=32, length=20)
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(0)
        idx = list(sampler)
        batch = next(iter(DataLoader(ds, batch_size=len(idx), sampler=sampler)))
        assert batch["index"].tolist() == idx
        torch.testing.assert_close(batch["image"], ds.render(idx)["image"], atol=1e-6, rtol=0)
        shards.append(set(idx))
    assert not (shards[0] & shards[1]) and shards[0] | shards[1] == set(range(20))
