"""Real image datasets held in memory as tensors.

* Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``), or any directory holding the same four ``*-ubyte[.gz]`` files.
* CIFAR-10, MNIST and Fashion-MNIST through torchvision from a configurable root (never downloaded at run time).

Images are returned as float32 tensors normalised with the dataset's mean and standard deviation, labels as int64.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DATASET_SHAPES",
    "DEBIAN_FASHION_MNIST",
    "DataError",
    "ImageData",
    "load_dataset",
    "read_idx",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_STATS = {  # per-channel mean and std of the training set
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

DATASETS = ("fashion-mnist", "mnist", "cifar10")
"""Names accepted by :func:`load_dataset`."""

DATASET_SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
"""One sample's ``(C, H, W)`` per dataset (all have 10 classes)."""


class DataError(RuntimeError):
    """A dataset is missing or corrupt; the message says how to get it."""


@dataclass
class ImageData:
    """An in-memory split of an image dataset.

    Attributes
    ----------
    x : torch.Tensor
        Images, ``(N, C, H, W)`` float32, normalised.
    y : torch.Tensor
        Labels, ``(N,)`` int64.
    num_classes : int
        Number of classes.
    name : str
        Dataset name.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """Shape of one sample ``(C, H, W)``."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: np.ndarray | torch.Tensor | list[int]) -> ImageData:
        """The samples at ``indices`` (a new object sharing no storage with this one)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageData(self.x[idx].contiguous(), self.y[idx].contiguous(), self.num_classes, self.name)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Raises
    ------
    DataError
        If the file is missing, truncated or not an IDX file.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path} is corrupt: {len(raw) - header} payload bytes, expected {expected} for shape {dims}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (root / name).exists():
            return root / name
    return None


def _normalise(x: np.ndarray, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(x, copy=True)).float().div_(255.0)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    mean, std = _STATS[name]
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((t - m) / s).contiguous()


def _load_idx_dir(root: Path, train: bool, name: str) -> ImageData:
    prefix = "train" if train else "t10k"
    img = _find(root, f"{prefix}-images-idx3-ubyte")
    lab = _find(root, f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
        raise DataError(_missing_message(name, root))
    x = read_idx(img)
    y = read_idx(lab)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{root}: images {x.shape} and labels {y.shape} do not match")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{lab} is corrupt: labels outside 0..9")
    return ImageData(_normalise(x, name), torch.from_numpy(y.astype(np.int64)), 10, name)


IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four IDX files of (Fashion-)MNIST, each also accepted gzip-compressed (``.gz``)."""


def _missing_message(name: str, root: Path) -> str:
    if name in ("fashion-mnist", "mnist") and root.is_dir() and any(_find(root, stem) for stem in IDX_STEMS):
        missing = [f"{stem}[.gz]" for stem in IDX_STEMS if _find(root, stem) is None]
        return (
            f"{name}: {root} lacks {', '.join(missing)} (it has the other IDX files). Copy the missing file(s) "
            "there, or point `data-root` at a directory with all four."
        )
    if name == "fashion-mnist":
        return (
            f"Fashion-MNIST not found in {root}. Install Debian's package "
            "(`sudo apt-get install dataset-fashion-mnist`, files go to /usr/share/datasets/fashion-mnist), "
            "or point `data-root` at a directory with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz."
        )
    return (
        f"{name} not found under {root}. edgeflower never downloads data at run time: fetch it once with "
        f"torchvision (e.g. `torchvision.datasets.{_TV_NAMES[name]}(root={str(root)!r}, download=True)`) "
        "on a machine with internet and copy the folder here, then set `data-root`."
    )


_TV_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _load_torchvision(name: str, root: Path, train: bool) -> ImageData:
    from torchvision import datasets as tvd

    cls = getattr(tvd, _TV_NAMES[name])
    try:
        ds = cls(root=str(root), train=train, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DataError(_missing_message(name, root) + f" (torchvision said: {exc})") from exc
    data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
    if data.ndim == 4:  # CIFAR: N, H, W, C
        data = data.transpose(0, 3, 1, 2)
    x = _normalise(data, name)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return ImageData(x, y, 10, name)


def default_root(name: str) -> Path:
    """The default data root of ``name`` (``$EDGEFLOWER_DATA`` overrides it)."""
    env = os.environ.get("EDGEFLOWER_DATA")
    if env:
        return Path(env)
    if name == "fashion-mnist":
        return DEBIAN_FASHION_MNIST
    return Path.home() / ".cache" / "edgeflower" / "data"


_CACHE: dict[tuple[str, str, bool], ImageData] = {}


def load_dataset(name: str, train: bool = True, root: str | Path | None = None, cache: bool = True) -> ImageData:
    """Load a dataset split into memory.

    Parameters
    ----------
    name : str
        ``"fashion-mnist"``, ``"mnist"`` or ``"cifar10"``.
    train : bool
        Training split (else test split).
    root : str or Path, optional
        Data directory. For Fashion-MNIST: a directory with the four IDX files (Debian's layout), or a
        torchvision root containing ``FashionMNIST/raw``. For the others: a torchvision root.
        Defaults to :func:`default_root`.
    cache : bool
        Keep the loaded split in a process-wide cache (the returned object must then be treated as read-only).

    Returns
    -------
    ImageData

    Raises
    ------
    DataError
        If the data is missing or corrupt; the message says how to get it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    path = Path(root) if root else default_root(name)
    key = (name, str(path), train)
    if cache and key in _CACHE:
        return _CACHE[key]
    if name == "fashion-mnist" and any(_find(path, stem) is not None for stem in IDX_STEMS):
        data = _load_idx_dir(path, train, name)
    elif name == "fashion-mnist" and (path / "FashionMNIST" / "raw").is_dir():
        data = _load_idx_dir(path / "FashionMNIST" / "raw", train, name)
    elif name == "mnist" and (path / "MNIST" / "raw").is_dir():
        data = _load_idx_dir(path / "MNIST" / "raw", train, name)
    elif name == "fashion-mnist":
        raise DataError(_missing_message(name, path))
    else:
        data = _load_torchvision(name, path, train)
    if cache:
        _CACHE[key] = data
    return data
