"""Datasets for supernet training, proxies and accuracy checks, held in memory as tensors.

Sources accepted by :func:`load_dataset`:

- ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes),
  shipped with the package, so nothing is downloaded; grey levels are replicated to 3 channels.
- an image-folder directory: ``root/<class>/<image>`` (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``,
  ``.gif``, ``.webp``), or ``root/<split>/<class>/<image>`` with ``split`` e.g. ``train``/``test``;
  read with PIL, converted to RGB and, if ``image_size`` is given, resized.
- an ``.npz`` file with images under ``x`` (or ``images``/``X``/``data``), shaped
  ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, and integer labels under ``y``
  (or ``labels``/``Y``/``targets``); ``x_<split>``/``y_<split>`` keys select a split.

Images are stored as float32 in [0, 1]; :meth:`ImageDataset.normalized` standardises them per
channel. Unreadable or empty sources raise :class:`DataError` with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from search.errors import SearchStageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class DataError(SearchStageError, ValueError):
    """A dataset source cannot be read or holds no usable images."""


@dataclass
class ImageDataset:
    """Images ``x`` (float32, ``(N, C, H, W)``) and labels ``y`` (int64, ``(N,)``)."""
    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str = ""
    mean: tuple[float, ...] | None = field(default=None)
    std: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.name}: images {tuple(self.x.shape)} and labels {tuple(self.y.shape)} do not match")
        if len(self.y) == 0:
            raise DataError(f"{self.name}: the dataset is empty")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> "ImageDataset":
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ImageDataset(self.x[idx], self.y[idx], self.classes, self.name, self.mean, self.std)

    def split(self, fraction: float = 0.2, seed: int = 0) -> tuple["ImageDataset", "ImageDataset"]:
        """A stratified (train, held-out) split with ``fraction`` of each class held out."""
        rng = np.random.default_rng(seed)
        y = self.y.numpy()
        held: list[int] = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            held.extend(idx[: max(1, int(round(fraction * len(idx))))].tolist())
        mask = np.ones(len(y), bool)
        mask[held] = False
        return self.subset(np.flatnonzero(mask)), self.subset(np.sort(held))

    def per_class(self, n: int, seed: int = 0) -> "ImageDataset":
        """At most ``n`` images of each class (a random, stratified subset)."""
        rng = np.random.default_rng(seed)
        y = self.y.numpy()
        keep = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            keep.extend(rng.permutation(idx)[:n].tolist())
        return self.subset(np.sort(keep))

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the (un-normalised) images."""
        m = self.x.mean(dim=(0, 2, 3))
        s = self.x.std(dim=(0, 2, 3)).clamp_min(1e-6)
        return tuple(m.tolist()), tuple(s.tolist())

    def normalized(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> "ImageDataset":
        """Standardised copy, with the given statistics or this dataset's own (use the training
        set's for its held-out set)."""
        if mean is None or std is None:
            mean, std = self.stats()
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return ImageDataset((self.x - m) / s, self.y, self.classes, self.name, tuple(mean), tuple(std))

    def batch(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed random batch of ``n`` images (e.g. for zero-cost proxies)."""
        idx = np.random.default_rng(seed).permutation(len(self))[:n]
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return self.x[idx_t], self.y[idx_t]

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Minibatches; with ``shuffle``, a permutation drawn from ``seed``."""
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for st in range(0, stop, batch_size):
            idx = torch.as_tensor(order[st:st + batch_size], dtype=torch.long)
            yield self.x[idx], self.y[idx]


def load_digits_dataset() -> ImageDataset:
    """scikit-learn's 8x8 digits as 3-channel images in [0, 1]."""
    # lazy: loads sklearn (slow to import) only when this runs
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div_(16.0).unsqueeze(1).repeat(1, 3, 1, 1)
    return ImageDataset(x, torch.tensor(d.target, dtype=torch.long), [str(c) for c in range(10)], "digits")


def _to_nchw(x: np.ndarray, source: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{source}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W); got shape {x.shape}")
    t = torch.tensor(np.ascontiguousarray(x), dtype=torch.float32)
    if np.issubdtype(x.dtype, np.integer) or float(t.max()) > 1.5:
        t = t / 255.0
    return t


def load_npz(path: str | Path, split: str | None = None) -> ImageDataset:
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any reading error is a data error for the user
        raise DataError(f"cannot read {path} as .npz: {e}") from e
    keys = set(z.files)
    suffix = f"_{split}" if split else ""
    xk = next((k + suffix for k in ("x", "images", "X", "data") if k + suffix in keys), None)
    yk = next((k + suffix for k in ("y", "labels", "Y", "targets") if k + suffix in keys), None)
    if xk is None or yk is None:
        raise DataError(f"{path}: needs image and label arrays (keys x/images/X/data and y/labels/Y/targets"
                        f"{', with suffix ' + suffix if suffix else ''}); found keys {sorted(keys)}")
    x, y = z[xk], z[yk]
    if len(x) == 0:
        raise DataError(f"{path}: the array {xk!r} is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels {yk!r} must be integers; got {y.dtype}")
    classes = [str(c) for c in range(int(y.max()) + 1)]
    return ImageDataset(_to_nchw(x, str(path)), torch.tensor(y.astype(np.int64)), classes, path.stem)


def load_image_folder(root: str | Path, split: str | None = None, image_size: int | None = None,
                      max_per_class: int | None = None, seed: int = 0) -> ImageDataset:
    """Read ``root/[split/]<class>/<image>``; ``max_per_class`` keeps a random subset per class."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    base = root / split if split else root
    if split and not base.is_dir():
        raise DataError(f"{root} has no {split!r} split (sub-directories: {sorted(p.name for p in root.iterdir() if p.is_dir())})")
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{base} holds no class sub-directories (expected {base}/<class>/<image>)")
    rng = np.random.default_rng(seed)
    images, labels, classes = [], [], []
    for ci, cdir in enumerate(class_dirs):
        files = sorted(p for p in cdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if max_per_class is not None and len(files) > max_per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), max_per_class, replace=False))]
        classes.append(cdir.name)
        for f in files:
            try:
                with Image.open(f) as src:
                    im = src.convert("RGB")
                    if image_size is not None and im.size != (image_size, image_size):
                        im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
                    images.append(np.asarray(im, dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"cannot read image {f}: {e}") from e
            labels.append(ci)
    if not images:
        raise DataError(f"{base}: no images with suffixes {IMAGE_SUFFIXES} in its {len(class_dirs)} class directories")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"{base}: images have different sizes {sorted(shapes)[:4]}...; pass image_size to resize them")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return ImageDataset(x, torch.tensor(labels, dtype=torch.long), classes, root.name)


def load_dataset(source: str | Path, split: str | None = None, image_size: int | None = None,
                 max_per_class: int | None = None, seed: int = 0) -> ImageDataset:
    """Load ``"digits"``, an image-folder directory or an ``.npz`` file (see the module doc).

    ``image_size`` resizes image folders (and is checked against other sources);
    ``max_per_class`` keeps a random stratified subset.
    """
    if str(source) == "digits":
        ds = load_digits_dataset()
    else:
        p = Path(source)
        if p.suffix == ".npz":
            if not p.is_file():
                raise DataError(f"dataset file {p} does not exist")
            ds = load_npz(p, split)
        elif p.is_dir() or not p.exists():
            return load_image_folder(p, split, image_size, max_per_class, seed)
        else:
            raise DataError(f"{p}: unsupported dataset (use a directory of class folders, an .npz file or 'digits')")
    if image_size is not None and ds.shape[1:] != (image_size, image_size):
        ds = ImageDataset(torch.nn.functional.interpolate(ds.x, size=(image_size, image_size), mode="bilinear",
                                                          align_corners=False), ds.y, ds.classes, ds.name)
    if max_per_class is not None:
        ds = ds.per_class(max_per_class, seed)
    return ds


__all__ = ["DataError", "ImageDataset", "load_dataset", "load_digits_dataset", "load_image_folder", "load_npz"]
