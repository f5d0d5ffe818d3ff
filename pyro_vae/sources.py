"""Where each data set comes from, and how its raw train/valid/test splits are made.

One loader per source returns :class:`RawSplits`, numpy arrays as read from disk (``[N, D]`` float32 data,
``[N]`` int64 labels or None) before :mod:`pyro_vae.data` turns them into tensors and binarizes them:

* :func:`load_digits`: scikit-learn's bundled 8x8 digits;
* :func:`load_idx`: MNIST / Fashion-MNIST IDX files, searched in several folders, downloaded by torchvision
  on request;
* :func:`load_binarized_mnist`: Larochelle's ``.amat`` (or ``.amat.gz``) files, downloaded from
  :data:`BINARIZED_MNIST_URL` on request;
* :func:`load_array_file`: a user's ``.npy`` / ``.npz`` file.

The file formats themselves are read by :mod:`pyro_vae.formats`. Held-out splits are drawn by permutations
with fixed seeds (:data:`DIGITS_TEST_SPLIT_SEED`, :data:`ARRAY_TEST_SPLIT_SEED`, and the run's ``seed`` for
the validation rows), so the same arguments always give the same rows. Every problem raises
:class:`~pyro_vae.formats.DataError` saying what was expected and where.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .formats import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DataError,
    check_data_array,
    image_shape_of,
    read_amat,
    read_array_file,
    read_idx,
    to_unit_float,
)
from .signals import say

__all__ = [
    "ARRAY_TEST_SPLIT_SEED",
    "BINARIZED_MNIST_URL",
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_TEST_SPLIT_SEED",
    "IDX_DATASETS",
    "NPZ_KEYS",
    "RawSplits",
    "SPLITS",
    "load_array_file",
    "load_binarized_mnist",
    "load_digits",
    "load_idx",
    "split_fields",
]

SPLITS = ("train", "valid", "test")

DIGITS_TEST_SPLIT_SEED = 0
"""Seed of the fixed permutation that picks the 360 ``digits`` test images."""

ARRAY_TEST_SPLIT_SEED = 0
"""Seed of the fixed permutation that picks the test rows of user arrays."""

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs the four gzipped IDX files."""

BINARIZED_MNIST_URL = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
    "binarized_mnist_{split}.amat"
)

NPZ_KEYS = ("train", "valid", "test", "train_labels", "valid_labels", "test_labels")

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_DATASETS = tuple(_TORCHVISION_NAMES)
"""The data sets read from IDX files by :func:`load_idx`."""

_AMAT_FILES = {split: f"binarized_mnist_{split}.amat" for split in SPLITS}

_DEFAULT_VALID_SIZE = {"digits": 180, "mnist": 10000, "fashion-mnist": 10000}
_DIGITS_TEST_SIZE = 360
_ARRAY_HOLDOUT_FRACTION = 0.1


@dataclass
class RawSplits:
    """Numpy splits as read from disk, before conversion to a :class:`~pyro_vae.data.Dataset`."""

    train: np.ndarray  # [N_train, D] float32
    valid: np.ndarray
    test: np.ndarray
    train_labels: Optional[np.ndarray]  # [N_train] int64 or None
    valid_labels: Optional[np.ndarray]
    test_labels: Optional[np.ndarray]
    image_shape: Optional[Tuple[int, ...]]


def split_fields(data, labels) -> dict:
    """``train=, valid=, test=, train_labels=, ...``: the per-split fields of a data set, from two dicts by split."""
    return {**{split: data[split] for split in SPLITS}, **{f"{split}_labels": labels[split] for split in SPLITS}}


# ----------------------------------------------------------------------------- held-out splits


def _hold_out(n_rows: int, n_held: int, seed: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """Pick ``n_held`` of ``n_rows`` rows with a permutation drawn by ``default_rng(seed)``.

    Returns:
        ``(kept, held)``: disjoint sorted index arrays covering ``range(n_rows)``.
    """
    if not 1 <= n_held < n_rows:
        raise DataError(
            f"{what} must be between 1 and {n_rows - 1} (there are {n_rows} rows to take "
            f"it from), got {n_held}"
        )
    order = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def _take(y: Optional[np.ndarray], index: np.ndarray) -> Optional[np.ndarray]:
    return None if y is None else y[index]


def _split_valid(
    train: np.ndarray,
    train_labels: Optional[np.ndarray],
    test: np.ndarray,
    test_labels: Optional[np.ndarray],
    valid_size: int,
    seed: int,
    image_shape: Optional[Tuple[int, ...]],
) -> RawSplits:
    """Hold out ``valid_size`` training rows (chosen by ``seed``) as the validation set."""
    kept, held = _hold_out(len(train), valid_size, seed, "valid_size")
    return RawSplits(
        train=train[kept],
        valid=train[held],
        test=test,
        train_labels=_take(train_labels, kept),
        valid_labels=_take(train_labels, held),
        test_labels=test_labels,
        image_shape=image_shape,
    )


def _holdout_size(n_rows: int) -> int:
    """Default number of rows held out from ``n_rows`` for a user array's test or valid split."""
    return max(1, int(n_rows * _ARRAY_HOLDOUT_FRACTION))


# ----------------------------------------------------------------------------- digits


def load_digits(valid_size: Optional[int], seed: int) -> RawSplits:
    """scikit-learn's 8x8 digits: 360 fixed test rows, ``valid_size`` (default 180) validation rows by ``seed``."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.data / 16.0).astype(np.float32)  # [1797, 64], grey levels 0..16
    labels = bunch.target.astype(np.int64)
    pool, test = _hold_out(len(images), _DIGITS_TEST_SIZE, DIGITS_TEST_SPLIT_SEED, "test size")
    return _split_valid(
        images[pool],
        labels[pool],
        images[test],
        labels[test],
        valid_size if valid_size is not None else _DEFAULT_VALID_SIZE["digits"],
        seed,
        (1, 8, 8),
    )


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST


def _idx_search_dirs(name: str, root: Path) -> List[Path]:
    dirs = [root, root / _TORCHVISION_NAMES[name] / "raw", root / name]
    if name == "fashion-mnist":
        dirs.append(Path(DEBIAN_FASHION_MNIST_DIR))
    return dirs


def _find_files(dirs: List[Path], names: Dict[str, str]) -> Optional[Dict[str, Path]]:
    """``{key: path}`` of the files ``names`` (each plain or ``.gz``, plain preferred) in the first of ``dirs``
    that holds them all, or None."""
    for directory in dirs:
        found = {key: next((path for path in (directory / base, directory / f"{base}.gz") if path.is_file()), None)
                 for key, base in names.items()}
        if all(found.values()):
            return found
    return None


def _download_torchvision(name: str, root: Path) -> Dict[str, Path]:
    """Let torchvision download the IDX files into ``root/<Name>/raw`` and return their paths."""
    import torchvision

    dataset_class = getattr(torchvision.datasets, _TORCHVISION_NAMES[name])
    try:
        dataset_class(root=str(root), download=True)
    except Exception as exc:  # torchvision raises various errors (network, checksum, disk)
        raise DataError(
            f"downloading {name} with torchvision into {root} failed: {exc}. Without internet, "
            f"copy the IDX files ({', '.join(_IDX_FILES.values())}, plain or .gz) into {root}"
        ) from exc
    raw_dir = root / _TORCHVISION_NAMES[name] / "raw"
    files = _find_files([raw_dir], _IDX_FILES)
    if files is None:
        raise DataError(f"torchvision reported a successful download, but {raw_dir} lacks the IDX files")
    return files


def _missing_idx_message(name: str, dirs: List[Path]) -> str:
    wanted = ", ".join(f"{base}[.gz]" for base in _IDX_FILES.values())
    searched = ", ".join(str(d) for d in dirs)
    how = []
    if name == "fashion-mnist":
        how.append("install the Debian package (apt-get install dataset-fashion-mnist)")
    how.append("pass --download (download=True) on a machine with internet")
    how.append("put the IDX files into --data-dir (data_dir)")
    return f"{name} not found: looked for {wanted} in {searched}. To get them, " + ", or ".join(how)


def load_idx(name: str, root: Path, valid_size: Optional[int], seed: int, download: bool) -> RawSplits:
    """MNIST or Fashion-MNIST (``name`` in :data:`IDX_DATASETS`) from its four IDX files.

    Searches ``root``, ``root/<MNIST|FashionMNIST>/raw``, ``root/<name>`` and, for Fashion-MNIST,
    :data:`DEBIAN_FASHION_MNIST_DIR`; with ``download`` torchvision fetches missing files into ``root``.
    Pixels are divided by 255 (``[N, 784]``); ``valid_size`` (default 10000) of the 60000 training images
    are held out by ``seed``; the 10000 ``t10k`` images are the test set.
    """
    dirs = _idx_search_dirs(name, root)
    files = _find_files(dirs, _IDX_FILES)
    if files is None:
        if not download:
            raise DataError(_missing_idx_message(name, dirs))
        files = _download_torchvision(name, root)

    arrays = {}
    for split in ("train", "test"):
        images = read_idx(files[f"{split}_images"], IDX_IMAGES_MAGIC)
        labels = read_idx(files[f"{split}_labels"], IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise DataError(
                f"{files[f'{split}_images']} holds {len(images)} images but "
                f"{files[f'{split}_labels']} holds {len(labels)} labels"
            )
        arrays[split] = (images, labels)
    train_images, train_labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{name}: train images are {train_images.shape[1:]} but test images are "
            f"{test_images.shape[1:]}"
        )

    def pixels(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float32) / 255

    return _split_valid(
        pixels(train_images),
        train_labels.astype(np.int64),
        pixels(test_images),
        test_labels.astype(np.int64),
        valid_size if valid_size is not None else _DEFAULT_VALID_SIZE[name],
        seed,
        (1,) + train_images.shape[1:],
    )


# ----------------------------------------------------------------------------- binarized MNIST


def _download_file(url: str, target: Path) -> None:
    """Fetch ``url`` into ``target`` atomically (temporary file, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:  # urllib.error.URLError and socket errors are OSErrors
        partial.unlink(missing_ok=True)
        raise DataError(
            f"downloading {url} failed: {exc}. Without internet, download the three "
            f"files ({', '.join(_AMAT_FILES.values())}) elsewhere and put them in {target.parent}"
        ) from exc
    os.replace(partial, target)


def _missing_amat_message(dirs: List[Path]) -> str:
    wanted = ", ".join(f"{base}[.gz]" for base in _AMAT_FILES.values())
    return (
        f"binarized-mnist not found: looked for {wanted} in {', '.join(str(d) for d in dirs)}. To get them, "
        "point --data-dir (data_dir) at a folder holding them directly or in a binarized_mnist/ subfolder "
        "(e.g. --data-dir ../shared/data for ../shared/data/binarized_mnist/), or download them on a machine "
        "with internet: pyro-vae train --dataset binarized-mnist --download (python -m experiments run ... "
        f"--download; download=True in Python), or fetch them from {BINARIZED_MNIST_URL} (split = train, "
        "valid, test) and put them, plain or gzipped, into --data-dir"
    )


def load_binarized_mnist(root: Path, valid_size: Optional[int], download: bool) -> RawSplits:
    """Larochelle's binarized MNIST from ``root`` or ``root/binarized_mnist``, each file ``.amat`` or ``.amat.gz``:
    the official 50000/10000/10000 split as is (so ``valid_size`` must be None), ``[N, 784]`` 0/1, no labels.
    With ``download`` the missing files are fetched from :data:`BINARIZED_MNIST_URL` into ``root``."""
    if valid_size is not None:
        raise DataError(
            "binarized-mnist comes with an official 50000/10000/10000 split; "
            "valid_size cannot be changed"
        )
    dirs = [root, root / "binarized_mnist"]
    files = _find_files(dirs, _AMAT_FILES)
    if files is None:
        if not download:
            raise DataError(_missing_amat_message(dirs))
        for split, filename in _AMAT_FILES.items():
            if not any((root / name).is_file() for name in (filename, f"{filename}.gz")):
                _download_file(BINARIZED_MNIST_URL.format(split=split), root / filename)
        files = _find_files([root], _AMAT_FILES)

    return RawSplits(
        **{split: read_amat(path) for split, path in files.items()},
        train_labels=None,
        valid_labels=None,
        test_labels=None,
        image_shape=(1, 28, 28),
    )


# ----------------------------------------------------------------------------- user arrays


def load_array_file(path: Path, valid_size: Optional[int], seed: int, scale_uint8: str = "auto") -> RawSplits:
    """A user's ``.npy`` / ``.npz`` file (keys :data:`NPZ_KEYS`), its missing splits held out from ``train``;
    uint8 pixels divided by 255 as ``scale_uint8`` says (:func:`~pyro_vae.formats.to_unit_float`), in a line on
    stderr.

    A missing ``test`` split takes 10% of the rows by :data:`ARRAY_TEST_SPLIT_SEED`; a missing ``valid`` split
    takes ``valid_size`` (default 10%) of the rest by ``seed``.
    """
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    members = read_array_file(path)
    unknown = sorted(set(members) - set(NPZ_KEYS))
    if unknown:
        raise DataError(
            f"{path} has unknown keys {', '.join(unknown)}; accepted keys are {', '.join(NPZ_KEYS)}"
        )
    if "train" not in members:
        raise DataError(f"{path} has no 'train' array; accepted keys are {', '.join(NPZ_KEYS)}")

    data_keys = [key for key in SPLITS if key in members]
    for key in data_keys:
        check_data_array(members[key], f"{path}[{key!r}]")
    example_shape = members["train"].shape[1:]
    for key in data_keys:
        if members[key].shape[1:] != example_shape:
            raise DataError(
                f"{path}: {key!r} examples have shape {members[key].shape[1:]} but 'train' "
                f"examples have shape {example_shape}"
            )
    for split in SPLITS:
        y = members.get(f"{split}_labels")
        if y is None:
            continue
        if split not in members:
            raise DataError(f"{path} has '{split}_labels' but no '{split}' array")
        if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != len(members[split]):
            raise DataError(
                f"{path}: '{split}_labels' must be 1-D integers, one per row of '{split}' "
                f"({len(members[split])}), got dtype {y.dtype} and shape {y.shape}"
            )

    arrays, note = to_unit_float([members[key] for key in data_keys], scale_uint8, str(path))
    if note:
        say(note)
    data = dict(zip(data_keys, arrays))
    labels = {split: members.get(f"{split}_labels") for split in SPLITS}
    image_shape = image_shape_of(example_shape)

    if "test" not in data:
        if len(data["train"]) < 3:
            raise DataError(f"{path} needs at least 3 rows to make train, valid and test splits")
        pool, test = _hold_out(
            len(data["train"]), _holdout_size(len(data["train"])), ARRAY_TEST_SPLIT_SEED, "test size"
        )
        data["test"], labels["test"] = data["train"][test], _take(labels["train"], test)
        data["train"], labels["train"] = data["train"][pool], _take(labels["train"], pool)

    if "valid" in data:
        if valid_size is not None:
            raise DataError(f"{path} has its own 'valid' array; valid_size cannot be set")
        return RawSplits(**split_fields(data, labels), image_shape=image_shape)
    return _split_valid(
        data["train"],
        labels["train"],
        data["test"],
        labels["test"],
        valid_size if valid_size is not None else _holdout_size(len(data["train"])),
        seed,
        image_shape,
    )
