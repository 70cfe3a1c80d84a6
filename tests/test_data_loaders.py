"""Real data set loaders on tiny data sets written in the real formats in tmp_path."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from fastlmk.data import DATASETS, AFLWThewlis, AFLWZhang, CelebA, ImageFolder, ImageReadError, MAFL, build_dataset

S = 64


def _dot_image(w, h, centre, path, r=3.0, fmt=None):
    """Dark-grey image with a white disc of radius r at the 0-based pixel centre ``centre``."""
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) <= r * r
    arr = np.full((h, w, 3), 30, np.uint8)
    arr[disc] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, quality=98) if (fmt or path.suffix.lower() in (".jpg", ".jpeg")) else Image.fromarray(arr).save(path)


def _centroid(img):
    """Brightness-weighted centroid of the bright blob of img (3, S, S) -> (x, y) in [-1, 1]."""
    g = img.mean(0)
    w = (g - 0.5).clamp(min=0)
    n = g.shape[0]
    c = torch.arange(n, dtype=torch.float32)
    x = (w.sum(0) * c).sum() / w.sum()
    y = (w.sum(1) * c).sum() / w.sum()
    return torch.stack([x, y]) * 2 / (n - 1) - 1


# ---------------------------------------------------------------------------------------------- CelebA

NAMES = [f"{i:06d}.jpg" for i in range(1, 7)]
# per image: 5 (x, y) points in pixels of the 178 x 218 aligned image
PTS = np.array([[[69 + i, 109], [106, 113 + i], [77, 142], [73, 152], [108 + i, 154]] for i in range(6)], float)


def _celeba(root, dot_landmark=2):
    img_dir = root / "Img" / "img_align_celeba"
    for i, name in enumerate(NAMES):
        _dot_image(178, 218, PTS[i, dot_landmark], img_dir / name)
    lines = [str(len(NAMES)),
             "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"]
    for name, p in zip(NAMES, PTS):
        lines.append(name + "".join(f" {int(v):5d}" for v in p.reshape(-1)))  # CelebA pads with spaces
    (root / "Anno").mkdir(parents=True)
    (root / "Anno" / "list_landmarks_align_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "MAFL").mkdir()
    (root / "MAFL" / "training.txt").write_text("\n".join(NAMES[:4]) + "\n")
    (root / "MAFL" / "testing.txt").write_text("\n".join(NAMES[4:]) + "\n")
    return root


def test_celeba_mafl_splits_and_imm_crop(tmp_path):
    root = _celeba(tmp_path)
    tr, te = MAFL(root, "train", size=S), MAFL(root, "test", size=S)
    assert len(tr) == 4 and len(te) == 2
    assert CelebA(root, "train", size=S).names == NAMES[:4]  # all CelebA minus the MAFL test images
    assert CelebA(root, "test", size=S).names == NAMES[4:]
    for ds, offset in ((tr, 0), (te, 4)):
        for k in range(len(ds)):
            item = ds[k]
            assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
            assert item["landmarks"].shape == (5, 2) and item["index"] == k
            # IMM crop by hand: resize 178 x 218 -> 80 x 80 (S / 0.8), keep the central S x S
            px = PTS[offset + k]
            rs = S / 0.8
            x = (px[:, 0] + 0.5) * rs / 178 - 0.5 - (rs - S) / 2
            y = (px[:, 1] + 0.5) * rs / 218 - 0.5 - (rs - S) / 2
            expect = torch.tensor(np.stack([x, y], -1) * 2 / (S - 1) - 1, dtype=torch.float32)
            torch.testing.assert_close(item["landmarks"], expect, atol=1e-5, rtol=0)
            # and the image was cropped the same way: the drawn dot lies at the nose landmark
            assert (_centroid(item["image"]) - item["landmarks"][2]).abs().max() < 0.6 * 2 / (S - 1)


def test_celeba_default_size_is_128_with_160_resize(tmp_path):
    root = _celeba(tmp_path)
    item = build_dataset("mafl", root, "test")[0]
    assert item["image"].shape == (3, 128, 128)
    x = (PTS[4, 0, 0] + 0.5) * 160 / 178 - 0.5 - 16  # resize to 160, crop 16 px margin
    assert abs(float(item["landmarks"][0, 0]) - (x * 2 / 127 - 1)) < 1e-5


def test_celeba_errors_name_file_and_line(tmp_path):
    root = _celeba(tmp_path)
    anno = root / "Anno" / "list_landmarks_align_celeba.txt"
    lines = anno.read_text().splitlines()
    lines[4] = "000003.jpg 69 109 106 abc 77 142 73 152 108 154"
    anno.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_landmarks_align_celeba\.txt, line 5"):
        MAFL(root, "train", size=S)
    lines[4] = "000003.jpg 69 109 106 113"
    anno.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_landmarks_align_celeba\.txt, line 5"):
        MAFL(root, "train", size=S)
    anno.unlink()
    with pytest.raises(FileNotFoundError, match="list_landmarks_align_celeba.txt"):
        MAFL(root, "train", size=S)


def test_celeba_bad_list_corrupt_and_missing_images(tmp_path):
    root = _celeba(tmp_path)
    (root / "MAFL" / "testing.txt").write_text("000005.jpg\n999999.jpg\n")
    with pytest.raises(ValueError, match=r"testing\.txt, line 2.*999999\.jpg"):
        MAFL(root, "test", size=S)
    (root / "MAFL" / "testing.txt").write_text("000005.jpg\n000006.jpg\n")
    ds = MAFL(root, "test", size=S)
    (root / "Img" / "img_align_celeba" / "000005.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageReadError, match="000005.jpg"):
        ds[0]
    (root / "Img" / "img_align_celeba" / "000006.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000006.jpg"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MAFL(tmp_path / "nowhere", "test")
    with pytest.raises(FileNotFoundError):
        build_dataset("celeba", None)


def test_build_dataset_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        build_dataset("imagenet")
    for name in DATASETS:
        assert name in str(e.value)
    assert len(build_dataset("synth", split="test", size=32, length=3)) == 3


# ---------------------------------------------------------------------------------------------- AFLW (Zhang)

def _aflw_zhang(root, n=3):
    rel = [f"{k}/image{k:05d}_{k + 100}.jpg" for k in range(n)]
    gt = np.zeros((n, 5, 2))
    hw = np.zeros((n, 2))
    pts_xy = []
    for k, r in enumerate(rel):
        w, h = 100 + 10 * k, 80  # non-square: a swapped axis would be caught
        xy = np.array([[30, 25], [70, 27], [50 + k, 45], [35, 60], [66, 62]], float)
        _dot_image(w, h, xy[2], root / "output" / r)
        gt[k] = xy[:, ::-1]  # (row, col)
        hw[k] = (h, w)
        pts_xy.append((xy, w, h))
    for split in ("train", "test"):
        (root / f"aflw_{split}_images.txt").write_text("\n".join(rel) + "\n")
        savemat(str(root / f"aflw_{split}_keypoints.mat"), {"gt": gt, "hw": hw})
    return pts_xy


def test_aflw_zhang_row_col_order(tmp_path):
    pts_xy = _aflw_zhang(tmp_path)
    ds = build_dataset("aflw_zhang", tmp_path, "test", size=S)
    assert isinstance(ds, AFLWZhang) and len(ds) == 3
    for k, (xy, w, h) in enumerate(pts_xy):
        item = ds[k]
        x = (xy[:, 0] + 0.5) * S / w - 0.5
        y = (xy[:, 1] + 0.5) * S / h - 0.5
        expect = torch.tensor(np.stack([x, y], -1) * 2 / (S - 1) - 1, dtype=torch.float32)
        torch.testing.assert_close(item["landmarks"], expect, atol=1e-5, rtol=0)
        assert item["landmarks"][0, 0] < item["landmarks"][1, 0]  # left eye is left: x really is x
        assert (_centroid(item["image"]) - item["landmarks"][2]).abs().max() < 0.6 * 2 / (S - 1)


def test_aflw_zhang_errors(tmp_path):
    _aflw_zhang(tmp_path)
    savemat(str(tmp_path / "aflw_train_keypoints.mat"), {"gt": np.zeros((3, 5, 2))})
    with pytest.raises(ValueError, match=r"aflw_train_keypoints\.mat.*'hw'"):
        AFLWZhang(tmp_path, "train")
    savemat(str(tmp_path / "aflw_train_keypoints.mat"), {"gt": np.zeros((2, 5, 2)), "hw": np.ones((2, 2))})
    with pytest.raises(ValueError, match="aflw_train_images.txt"):
        AFLWZhang(tmp_path, "train")
    (tmp_path / "aflw_test_keypoints.mat").unlink()
    with pytest.raises(FileNotFoundError, match="aflw_test_keypoints.mat"):
        AFLWZhang(tmp_path, "test")


# ---------------------------------------------------------------------------------------------- AFLW (Thewlis)

def _aflw_thewlis(root):
    crop = root / "aflw_cropped"
    header = "face_id,image_file,set,crop_file," + ",".join(f"{a}{i}" for i in range(1, 6) for a in "xy")
    rows = [header]
    train_xy = []
    for k in range(4):
        xy = np.array([[45, 60], [100, 58], [75 + k, 85], [55, 110], [95, 112]], float)  # 0-based
        name = f"cropped/{39000 + k}.jpg"
        _dot_image(150, 150, xy[2], crop / name)
        s = 1 if k < 3 else 2  # the last row is not a training row
        rows.append(f"{k},image{k:05d}.jpg,{s},{name}," + ",".join(f"{v + 1:g}" for v in xy.reshape(-1)))
        if s == 1:
            train_xy.append(xy)
    (crop / "facedata_cropped.csv").write_text("\n".join(rows) + "\n")
    mtfl = root / "MTFL"
    lines = []
    test_xy = []
    for k in range(2):
        xy = np.array([[40, 50], [90, 52], [66, 80 + k], [50, 100], [88, 101]], float)
        _dot_image(150, 150, xy[2], mtfl / "AFLW" / f"{k:04d}-image{k:05d}.jpg")
        vals = list(xy[:, 0] + 1) + list(xy[:, 1] + 1)  # x1..x5 y1..y5, 1-based
        lines.append(f"AFLW\\{k:04d}-image{k:05d}.jpg " + " ".join(f"{v:g}" for v in vals) + " 1 2 2 3")
        test_xy.append(xy)
    (mtfl / "testing.txt").write_text("\n".join(lines) + "\n")
    return train_xy, test_xy


def _norm(xy, w, h):
    x = (xy[:, 0] + 0.5) * S / w - 0.5
    y = (xy[:, 1] + 0.5) * S / h - 0.5
    return torch.tensor(np.stack([x, y], -1) * 2 / (S - 1) - 1, dtype=torch.float32)


def test_aflw_thewlis_train_csv_and_mtfl_test(tmp_path):
    train_xy, test_xy = _aflw_thewlis(tmp_path)
    tr = build_dataset("aflw_thewlis", tmp_path, "train", size=S)
    te = AFLWThewlis(tmp_path, "test", size=S)
    assert len(tr) == 3 and len(te) == 2
    for ds, ref in ((tr, train_xy), (te, test_xy)):
        for k, xy in enumerate(ref):
            item = ds[k]
            torch.testing.assert_close(item["landmarks"], _norm(xy, 150, 150), atol=1e-5, rtol=0)
            assert (_centroid(item["image"]) - item["landmarks"][2]).abs().max() < 0.6 * 2 / (S - 1)


def test_aflw_thewlis_errors(tmp_path):
    _aflw_thewlis(tmp_path)
    csv_path = tmp_path / "aflw_cropped" / "facedata_cropped.csv"
    lines = csv_path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 3)[0]  # drop three fields on line 3
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"facedata_cropped\.csv, line 3"):
        AFLWThewlis(tmp_path, "train")
    t = tmp_path / "MTFL" / "testing.txt"
    t.write_text(t.read_text().replace(" 1 2 2 3", "", 1).replace("0001-image00001.jpg 41", "0001-image00001.jpg x41"))
    with pytest.raises(ValueError, match=r"testing\.txt, line 2"):
        AFLWThewlis(tmp_path, "test")


# ---------------------------------------------------------------------------------------------- folder

def test_image_folder_recursive_skips_unreadable_with_counted_warning(tmp_path):
    _dot_image(60, 40, (30, 20), tmp_path / "a.jpg")
    _dot_image(40, 60, (20, 30), tmp_path / "sub" / "b.png")
    _dot_image(50, 50, (25, 25), tmp_path / "sub" / "deeper" / "c.JPEG", fmt="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "broken.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*broken\.jpg"):
        ds = build_dataset("folder", tmp_path, size=S)
    assert isinstance(ds, ImageFolder) and len(ds) == 3 and ds.num_skipped == 1
    for k in range(3):
        item = ds[k]
        assert set(item) == {"image", "index"} and item["image"].shape == (3, S, S)
        # centre crop keeps the dot (drawn at the image centre) in the middle
        assert _centroid(item["image"]).abs().max() < 2 * 2 / (S - 1)
    # truncated data (header fine, pixels missing): replaced by the next image, counted, warned
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"2 skipped so far"):
        item = ds[0]
    assert item["index"] == 1 and ds.num_skipped == 2


def test_image_folder_empty_or_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no readable images"):
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        ImageFolder(tmp_path / "missing_dir")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _dot_image(20, 20, (10, 10), tmp_path / "x.png")
        assert len(ImageFolder(tmp_path)) == 1
