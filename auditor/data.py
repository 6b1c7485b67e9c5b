"""Clean labelled samples for an audit: a folder of class folders, an .npz (x, y), or a bundled set.

Everything is returned in pixel space: float32 N x C x H x W in [0, 1]; models see it only through
ModelHandle, which applies the normalisation. Fit (scan, defense, repair) and evaluation samples
come from one seeded, stratified, disjoint split.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import AuditorInputError

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
BUNDLED = {"fashion-mnist": FIXTURES_DIR / "data" / "fashion_mnist_eval.npz"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_SAMPLES = 200_000


@dataclass(frozen=True)
class ImageSet:
    x: torch.Tensor  # N x C x H x W, float32 in [0, 1]
    y: torch.Tensor  # N, int64
    source: str
    paths: tuple[str, ...] | None = None  # one file per image, for a folder data set
    class_names: tuple[str, ...] | None = None  # the class folders' names, for a folder data set

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        paths = None if self.paths is None else tuple(self.paths[i] for i in index.tolist())
        return ImageSet(self.x[index], self.y[index], self.source, paths, self.class_names)


@dataclass(frozen=True)
class Split:
    fit: ImageSet
    eval: ImageSet


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed): the Fashion-MNIST/MNIST distribution format."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise AuditorInputError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _to_nchw(x: np.ndarray, where: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise AuditorInputError(f"{where}: images must be N x H x W, N x H x W x C or N x C x H x W, got {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if not torch.isfinite(t).all():
            raise AuditorInputError(f"{where}: images contain NaN or Inf")
        if t.min() < 0 or t.max() > 1:
            raise AuditorInputError(f"{where}: float images must be in [0, 1] (pixel space, before normalisation)")
    else:
        raise AuditorInputError(f"{where}: unsupported image dtype {x.dtype}")
    return t


def load_npz(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz or "y" not in npz:
                raise AuditorInputError(f"{path}: an .npz data set needs arrays 'x' and 'y' (has {sorted(npz.files)})")
            x, y = npz["x"], npz["y"]
    except AuditorInputError:
        raise
    except Exception as exc:  # numpy raises many types for corrupt or pickled archives
        raise AuditorInputError(f"{path}: cannot read .npz data set: {exc}") from None
    if x.ndim == 0 or len(x) == 0:
        raise AuditorInputError(f"{path}: the data set is empty (x has shape {x.shape})")
    if y.ndim != 1 or len(y) != len(x):
        raise AuditorInputError(f"{path}: 'y' must be one label per image ({len(x)} images, y shape {y.shape})")
    if not np.issubdtype(y.dtype, np.integer):
        raise AuditorInputError(f"{path}: labels 'y' must be integers, got {y.dtype}")
    return ImageSet(_to_nchw(x, str(path)), torch.from_numpy(y.astype(np.int64)), str(path))


def load_image_folder(root: Path) -> ImageSet:
    from PIL import Image

    try:
        classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        files = [(label, sorted(folder.iterdir())) for label, folder in enumerate(classes)]
    except OSError as exc:  # e.g. a folder without read permission
        raise AuditorInputError(f"{exc.filename or root}: cannot list the data folder: {exc.strerror or exc}") from None
    if not classes:
        raise AuditorInputError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    images, labels, paths, size = [], [], [], None
    for label, folder_files in files:
        for file in folder_files:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    img = img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()
            except (OSError, ValueError, Image.DecompressionBombError) as exc:  # ValueError: corrupt PPM/BMP headers
                raise AuditorInputError(f"{file}: cannot read image: {exc}") from None
            arr = np.asarray(img)
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise AuditorInputError(f"{file}: image size {arr.shape} differs from the first image's {size}; resize the data set to one size")
            images.append(arr)
            labels.append(label)
            paths.append(str(file))
            if len(images) > MAX_SAMPLES:
                raise AuditorInputError(f"{root}: more than {MAX_SAMPLES} images; pass a subset")
    if not images:
        raise AuditorInputError(f"{root}: class folders contain no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageSet(_to_nchw(np.stack(images), str(root)), torch.tensor(labels), str(root), tuple(paths),
                    tuple(folder.name for folder in classes))


def load_data(spec: str) -> ImageSet:
    """`spec` is a bundled set's name, an .npz file, or a folder of class folders."""
    if spec in BUNDLED:
        path = BUNDLED[spec]
        if not path.is_file():
            raise AuditorInputError(f"bundled data set {spec!r} is missing ({path}); run `make fixtures`")
        data = load_npz(path)
        return ImageSet(data.x, data.y, f"bundled:{spec}")
    path = Path(spec)
    if path.is_dir():
        return load_image_folder(path)
    if path.is_file():
        if path.suffix != ".npz":
            raise AuditorInputError(f"{path}: data must be a folder of class folders or an .npz file with x and y")
        return load_npz(path)
    known = ", ".join(BUNDLED)
    raise AuditorInputError(f"{spec}: no such data folder or file (bundled sets: {known})")


def conform(data: ImageSet, channels: int, height: int, width: int, num_classes: int) -> ImageSet:
    """Fit images to the model's input: 1 <-> 3 channels and resizing are allowed, labels must fit."""
    if len(data) == 0:
        raise AuditorInputError(f"{data.source}: the data set is empty")
    if data.y.min() < 0 or data.y.max() >= num_classes:
        raise AuditorInputError(
            f"{data.source}: labels span {int(data.y.min())}..{int(data.y.max())} but the model has {num_classes} classes"
        )
    x = data.x
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1 and x.shape[1] in (3, 4):
            x = (x[:, :3] * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif x.shape[1] == 4 and channels == 3:
            x = x[:, :3]
        else:
            raise AuditorInputError(f"{data.source}: images have {x.shape[1]} channels, the model takes {channels}")
    if tuple(x.shape[2:]) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
    return ImageSet(x.contiguous(), data.y, data.source, data.paths, data.class_names)


def split(data: ImageSet, per_class: int, seed: int, num_classes: int) -> Split:
    """Stratified: `per_class` samples of each class (at most half of the class) go to fit, the rest to eval."""
    if len(data) < 2:
        raise AuditorInputError(f"{data.source}: need at least 2 samples, got {len(data)}")
    gen = torch.Generator().manual_seed(seed)
    fit_idx, eval_idx = [], []
    for c in range(num_classes):
        idx = (data.y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        take = min(per_class, len(idx) // 2)
        fit_idx.append(idx[:take])
        eval_idx.append(idx[take:])
    fit_index, eval_index = torch.cat(fit_idx).sort().values, torch.cat(eval_idx).sort().values
    if len(fit_index) == 0 or len(eval_index) == 0:
        raise AuditorInputError(f"{data.source}: too few samples per class to split into fit and evaluation sets")
    return Split(data.subset(fit_index), data.subset(eval_index))
