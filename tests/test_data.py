"""auditor.data: loaders (npz, image folders, bundled), conform, the stratified split, input errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.data import ImageSet, conform, load_data, load_image_folder, load_npz, split
from auditor.errors import AuditorInputError


# ----------------------------------------------------------------------------- load_npz
def test_load_npz_uint8_nhw(tmp_path):
    x = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    y = np.array([0, 1, 2, 1])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_npz(tmp_path / "d.npz")
    assert data.x.shape == (4, 1, 5, 6)
    assert data.x.dtype == torch.float32
    assert torch.allclose(data.x[:, 0], torch.from_numpy(x).float() / 255)
    assert data.y.dtype == torch.int64
    assert data.y.tolist() == [0, 1, 2, 1]
    assert data.source == str(tmp_path / "d.npz")


def test_load_npz_nhwc_is_transposed(tmp_path):
    x = np.random.default_rng(0).random((3, 8, 9, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0]))
    data = load_npz(tmp_path / "d.npz")
    assert data.x.shape == (3, 3, 8, 9)
    assert torch.equal(data.x, torch.from_numpy(x).permute(0, 3, 1, 2))


def test_load_npz_without_x_or_y(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    with pytest.raises(AuditorInputError, match="'x' and 'y'") as err:
        load_npz(tmp_path / "d.npz")
    assert "d.npz" in str(err.value)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_load_npz_refuses_pickled_object_arrays(tmp_path):
    marker = tmp_path / "MARKER"
    x = np.empty(2, dtype=object)
    x[0], x[1] = _Payload(marker), _Payload(marker)
    np.savez(tmp_path / "evil.npz", x=x, y=np.array([0, 1]))
    with pytest.raises(AuditorInputError, match="allow_pickle") as err:
        load_npz(tmp_path / "evil.npz")
    assert "evil.npz" in str(err.value)
    assert not marker.exists()


def test_load_npz_refuses_nan(tmp_path):
    x = np.full((2, 4, 4), 0.5, np.float32)
    x[1, 2, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1]))
    with pytest.raises(AuditorInputError, match="NaN") as err:
        load_npz(tmp_path / "d.npz")
    assert "d.npz" in str(err.value)


def test_load_npz_refuses_float_outside_unit_range(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((2, 4, 4), 255.0, np.float32), y=np.array([0, 1]))
    with pytest.raises(AuditorInputError, match=r"\[0, 1\]"):
        load_npz(tmp_path / "d.npz")


@pytest.mark.parametrize("y", [np.array([0, 1, 2]), np.array([[0], [1]]), np.array([0.0, 1.0])])
def test_load_npz_bad_labels(tmp_path, y):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4, 4), np.uint8), y=y)
    with pytest.raises(AuditorInputError, match="d.npz"):
        load_npz(tmp_path / "d.npz")


def test_load_npz_corrupt_file(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(AuditorInputError, match="d.npz"):
        load_npz(tmp_path / "d.npz")


# ----------------------------------------------------------------------------- image folders
def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_load_image_folder_grey(tmp_path):
    root = tmp_path / "imgs"
    arrays = {}
    for cls in ("bird", "cat"):  # sorted folder names are the labels: bird=0, cat=1
        for i in range(3):
            arr = np.full((6, 7), 40 * i + (100 if cls == "cat" else 0), np.uint8)
            _write_png(root / cls / f"{i}.png", arr)
            arrays[(cls, i)] = arr
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored by suffix
    data = load_image_folder(root)
    assert data.x.shape == (6, 1, 6, 7)
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(data.x[4, 0], torch.from_numpy(arrays[("cat", 1)]).float() / 255)
    assert torch.allclose(data.x[0, 0], torch.zeros(6, 7))


def test_load_image_folder_rgb_and_via_load_data(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    _write_png(root / "a" / "x.png", first)
    _write_png(root / "b" / "y.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    data = load_data(str(root))
    assert data.x.shape == (2, 3, 5, 5)
    assert data.y.tolist() == [0, 1]
    assert torch.allclose(data.x[0], torch.from_numpy(first).permute(2, 0, 1).float() / 255)


def test_load_image_folder_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditorInputError, match="no class folders") as err:
        load_image_folder(tmp_path / "empty")
    assert "empty" in str(err.value)


def test_load_image_folder_without_images(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "readme.txt").write_text("hi")
    (tmp_path / "d" / "b").mkdir()
    with pytest.raises(AuditorInputError, match="no images"):
        load_image_folder(tmp_path / "d")


def test_load_image_folder_mixed_sizes(tmp_path):
    _write_png(tmp_path / "d" / "a" / "1.png", np.zeros((4, 4), np.uint8))
    _write_png(tmp_path / "d" / "b" / "2.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(AuditorInputError, match="2.png"):
        load_image_folder(tmp_path / "d")


def test_load_image_folder_corrupt_image(tmp_path):
    _write_png(tmp_path / "d" / "a" / "1.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "d" / "b").mkdir()
    (tmp_path / "d" / "b" / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(AuditorInputError, match="bad.png"):
        load_image_folder(tmp_path / "d")


# ----------------------------------------------------------------------------- load_data
def test_load_bundled_fashion_mnist():
    data = load_data("fashion-mnist")
    assert data.source == "bundled:fashion-mnist"
    assert data.x.ndim == 4 and tuple(data.x.shape[1:]) == (1, 28, 28)
    assert len(data) == len(data.x) > 1000
    assert data.x.min() >= 0 and data.x.max() <= 1 and data.x.max() > 0.5
    assert sorted(data.y.unique().tolist()) == list(range(10))


def test_load_data_unknown_spec_lists_bundled(tmp_path):
    with pytest.raises(AuditorInputError, match="fashion-mnist") as err:
        load_data(str(tmp_path / "missing"))
    assert "missing" in str(err.value)


def test_load_data_wrong_file_type(tmp_path):
    (tmp_path / "d.csv").write_text("1,2,3")
    with pytest.raises(AuditorInputError, match="d.csv"):
        load_data(str(tmp_path / "d.csv"))


# ----------------------------------------------------------------------------- conform
def _set(x, y):
    return ImageSet(x, torch.tensor(y), "test")


def test_conform_grey_to_rgb():
    x = torch.rand(3, 1, 4, 4)
    out = conform(_set(x, [0, 1, 2]), 3, 4, 4, 3)
    assert out.x.shape == (3, 3, 4, 4)
    for c in range(3):
        assert torch.equal(out.x[:, c], x[:, 0])
    assert out.y.tolist() == [0, 1, 2]


def test_conform_rgb_to_grey_uses_luma():
    x = torch.zeros(1, 3, 2, 2)
    x[:, 1] = 1.0  # pure green
    out = conform(_set(x, [0]), 1, 2, 2, 2)
    assert out.x.shape == (1, 1, 2, 2)
    assert torch.allclose(out.x, torch.full((1, 1, 2, 2), 0.587))


def test_conform_resizes_and_stays_in_range():
    x = torch.rand(2, 1, 28, 28)
    out = conform(_set(x, [0, 1]), 1, 32, 32, 2)
    assert out.x.shape == (2, 1, 32, 32)
    assert out.x.min() >= 0 and out.x.max() <= 1
    constant = conform(_set(torch.full((1, 1, 8, 8), 0.25), [0]), 1, 5, 3, 2)
    assert torch.allclose(constant.x, torch.full((1, 1, 5, 3), 0.25))


def test_conform_unchanged_when_shapes_fit():
    x = torch.rand(2, 1, 6, 6)
    out = conform(_set(x, [0, 1]), 1, 6, 6, 2)
    assert torch.equal(out.x, x)


@pytest.mark.parametrize("labels", [[0, 1, 10], [-1, 0, 1]])
def test_conform_label_out_of_range(labels):
    with pytest.raises(AuditorInputError, match="10 classes"):
        conform(_set(torch.rand(3, 1, 4, 4), labels), 1, 4, 4, 10)


def test_conform_incompatible_channels_and_empty():
    with pytest.raises(AuditorInputError, match="channels"):
        conform(_set(torch.rand(2, 2, 4, 4), [0, 1]), 3, 4, 4, 2)
    with pytest.raises(AuditorInputError, match="empty"):
        conform(ImageSet(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long), "test"), 1, 4, 4, 2)


# ----------------------------------------------------------------------------- split
def _indexed_set(per_class: int, num_classes: int) -> ImageSet:
    """Every image carries its own index in pixel (0, 0) so fit/eval membership is visible."""
    n = per_class * num_classes
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    y = torch.arange(n) % num_classes
    return ImageSet(x, y, "indexed")


def _ids(s: ImageSet) -> set[int]:
    return {int(v) for v in s.x[:, 0, 0, 0]}


def test_split_stratified_disjoint_complete():
    data = _indexed_set(40, 5)
    sp = split(data, 10, seed=0, num_classes=5)
    assert torch.bincount(sp.fit.y, minlength=5).tolist() == [10] * 5
    assert torch.bincount(sp.eval.y, minlength=5).tolist() == [30] * 5
    fit, ev = _ids(sp.fit), _ids(sp.eval)
    assert not fit & ev
    assert fit | ev == set(range(200))
    # labels travel with their images
    for s in (sp.fit, sp.eval):
        assert torch.equal(s.y, s.x[:, 0, 0, 0].long() % 5)


def test_split_deterministic_per_seed():
    data = _indexed_set(40, 5)
    a, b = split(data, 10, 3, 5), split(data, 10, 3, 5)
    assert torch.equal(a.fit.x, b.fit.x) and torch.equal(a.eval.x, b.eval.x)
    c = split(data, 10, 4, 5)
    assert _ids(a.fit) != _ids(c.fit)


def test_split_never_takes_more_than_half_a_class():
    data = _indexed_set(4, 3)
    sp = split(data, 100, 0, 3)
    assert torch.bincount(sp.fit.y, minlength=3).tolist() == [2, 2, 2]
    assert len(sp.eval) == 6


def test_split_bundled_data(fmnist):
    sp = split(fmnist, 50, 0, 10)
    assert len(sp.fit) == 500
    assert torch.bincount(sp.fit.y, minlength=10).tolist() == [50] * 10
    assert len(sp.fit) + len(sp.eval) == len(fmnist)


def test_split_too_small():
    with pytest.raises(AuditorInputError, match="at least 2"):
        split(_set(torch.rand(1, 1, 2, 2), [0]), 10, 0, 2)
    with pytest.raises(AuditorInputError, match="too few"):
        split(_set(torch.rand(2, 1, 2, 2), [0, 1]), 10, 0, 2)
