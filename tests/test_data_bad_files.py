"""Bad annotation files and arguments of the data loaders (issue 11): a clear error naming the
file (or the argument), never a raw numpy error or landmarks of 1e28."""

import numpy as np
import pytest
from scipy.io import savemat

from fastlmk.data import AFLWZhang, build_dataset
from test_data_loaders import _aflw_zhang


@pytest.mark.parametrize("content,msg", [
    ({"gt": np.array(["a", "b"], dtype=object), "hw": np.ones((3, 2))}, "gt and hw must be numeric arrays"),
    ({"gt": np.zeros((3, 5, 2)), "hw": np.ones((3, 3))}, r"hw must be \(N, 2\)"),
    ({"gt": np.zeros((3, 4, 2)), "hw": np.ones((3, 2))}, r"gt must be \(N, 5, 2\)"),
    ({"gt": np.full((3, 5, 2), 1e30), "hw": np.full((3, 2), 80.0)}, "far outside its"),
])
def test_aflw_bad_mat_contents(tmp_path, content, msg):
    _aflw_zhang(tmp_path)
    savemat(str(tmp_path / "aflw_train_keypoints.mat"), content)
    with pytest.raises(ValueError, match=r"aflw_train_keypoints\.mat.*" + msg):
        AFLWZhang(tmp_path, "train")


@pytest.mark.parametrize("size", ["big", 64.7, None])
def test_size_must_be_an_int(tmp_path, size):
    _aflw_zhang(tmp_path)
    with pytest.raises(TypeError, match="size must be an int"):
        build_dataset("aflw_zhang", tmp_path, "train", size=size)


def test_mafl_coinciding_eyes_name_the_image(tmp_path):
    from test_data_loaders import NAMES, PTS, _celeba

    import test_data_loaders

    pts = PTS.copy()
    pts[5, 1] = pts[5, 0]  # a MAFL test image whose right eye sits on its left eye
    old = test_data_loaders.PTS
    test_data_loaders.PTS = pts
    try:
        _celeba(tmp_path)
    finally:
        test_data_loaders.PTS = old
    with pytest.raises(ValueError, match=f"image '{NAMES[5]}'.*coinciding eye landmarks"):
        build_dataset("mafl", tmp_path, "test", size=32)
    assert len(build_dataset("celeba", tmp_path, "train", size=32)) > 0  # training images need no eyes
