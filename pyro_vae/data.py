"""Data sets for the VAEs: loaders, binarization and train/valid/test splits.

Every loader returns a :class:`Dataset` holding flattened ``float32`` tensors of
shape ``[N, D]`` for the three splits ``train``, ``valid`` and ``test``. The
validation split is always held out from the training set, never from the test
set. This module knows nothing about models.

Data sets (``name`` argument of :func:`load_dataset`):

``digits``
    scikit-learn's bundled 8x8 handwritten digits (1797 images, grey levels
    0..16 divided by 16, ``image_shape`` ``(1, 8, 8)``). Works offline; the
    library's embedded default. There is no official split: a fixed permutation
    drawn with :data:`DIGITS_TEST_SPLIT_SEED` (independent of ``seed``) makes
    the first 360 rows the test set; of the remaining 1437, ``valid_size``
    (default 180) rows are held out as the validation set by ``seed``.
``mnist`` / ``fashion-mnist``
    The IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or
    gzipped (``.gz``). Directories searched, in order: ``data_dir``,
    ``data_dir/MNIST/raw`` or ``data_dir/FashionMNIST/raw`` (torchvision's
    layout), ``data_dir/mnist`` or ``data_dir/fashion-mnist``, and for
    Fashion-MNIST finally :data:`DEBIAN_FASHION_MNIST_DIR` (filled by
    ``apt-get install dataset-fashion-mnist``). ``data_dir`` defaults to
    :data:`DEFAULT_DATA_DIR`. With ``download=True`` missing files are fetched
    by torchvision into ``data_dir``. Pixels are divided by 255, images are
    28x28 (``image_shape`` ``(1, 28, 28)``), labels are 0..9. Of the 60000
    training images ``valid_size`` (default 10000) are held out by ``seed``;
    the 10000 ``t10k`` images are the test set.
``binarized-mnist``
    Larochelle's fixed binarization of MNIST: ``binarized_mnist_train.amat``,
    ``binarized_mnist_valid.amat`` and ``binarized_mnist_test.amat`` in
    ``data_dir`` or ``data_dir/binarized_mnist``; one image per line as 784
    space-separated 0/1 values. The official 50000/10000/10000 split is used
    as is, so ``valid_size`` may not be given. No labels. ``download=True``
    fetches the files from :data:`BINARIZED_MNIST_URL` into ``data_dir``.
    The data are already binary, so ``binarize="dynamic"`` is refused and
    ``"static"`` returns them unchanged.
``<path>.npy``
    One array ``[N, ...]``, flattened to ``[N, D]``. A fixed permutation drawn
    with :data:`ARRAY_TEST_SPLIT_SEED` holds out 10% of the rows as the test
    set; of the rest, ``valid_size`` rows (default 10%) are held out by
    ``seed`` as the validation set. No labels.
``<path>.npz``
    Arrays under the keys of :data:`NPZ_KEYS`: ``train`` (required), ``valid``
    and ``test`` (optional; a missing one is held out from ``train`` as for
    ``.npy``), and ``train_labels``/``valid_labels``/``test_labels``
    (optional, 1-D integers, one per row of the matching split).

User arrays of shape ``[N, H, W]`` get ``image_shape`` ``(1, H, W)``,
``[N, C, H, W]`` get ``(C, H, W)``, others ``None``. ``uint8`` arrays with
values above 1 are divided by 255; other values are kept as they are, and
values outside [0, 1] are accepted only with ``binarize="none"`` (e.g. for a
Gaussian likelihood). Non-finite values are refused.

Binarization (``binarize`` argument, one of :data:`BINARIZE_MODES`); each
grey level ``x`` in [0, 1] becomes a Bernoulli(``x``) draw, using a
``torch.Generator`` seeded as documented so that results are reproducible:

``none``
    Grey levels unchanged.
``static``
    Every split is binarized once, at load time: train with the seed
    :data:`STATIC_BINARIZATION_SEED`, valid with ``STATIC_BINARIZATION_SEED + 1``
    and test with ``STATIC_BINARIZATION_SEED + 2``.
``dynamic``
    ``Dataset.train`` keeps the grey levels and :meth:`Dataset.train_epoch`
    draws a fresh binarization each epoch, seeded by
    :func:`epoch_seed` ``(seed, epoch)`` so a resumed run sees the same data.
    Valid and test are binarized once exactly as in ``static`` mode, so
    evaluation numbers are comparable across runs and across both modes.

Every problem with the data (unknown name, missing or corrupt file, bad
values, impossible split sizes) raises :class:`DataError` with a message that
says what was expected and where.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "ARRAY_TEST_SPLIT_SEED",
    "BINARIZED_MNIST_URL",
    "BINARIZE_MODES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DEFAULT_DATA_DIR",
    "DIGITS_TEST_SPLIT_SEED",
    "DataError",
    "Dataset",
    "NPZ_KEYS",
    "STATIC_BINARIZATION_SEED",
    "epoch_seed",
    "load_dataset",
]

DATASETS = ("digits", "fashion-mnist", "mnist", "binarized-mnist")
BINARIZE_MODES = ("none", "static", "dynamic")
SPLITS = ("train", "valid", "test")

STATIC_BINARIZATION_SEED = 1234
"""Seed of the one-off binarizations: train (static mode) uses it, valid ``+ 1``, test ``+ 2``."""

DIGITS_TEST_SPLIT_SEED = 0
"""Seed of the fixed permutation that picks the 360 ``digits`` test images."""

ARRAY_TEST_SPLIT_SEED = 0
"""Seed of the fixed permutation that picks the test rows of user arrays."""

DEFAULT_DATA_DIR = "~/.cache/pyro_vae"
"""Where data files are looked for (and downloaded to) when no ``data_dir`` is given."""

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
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

_AMAT_PIXELS = 784
_AMAT_FILES = {split: f"binarized_mnist_{split}.amat" for split in SPLITS}

_DEFAULT_VALID_SIZE = {"digits": 180, "mnist": 10000, "fashion-mnist": 10000}
_DIGITS_TEST_SIZE = 360
_ARRAY_HOLDOUT_FRACTION = 0.1


class DataError(ValueError):
    """A data set cannot be found, read or split as asked; the message says why."""


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the dynamic binarization of one training epoch.

    Mixes ``(seed, epoch)`` with ``numpy.random.SeedSequence`` so that distinct
    pairs give unrelated streams.

    Args:
        seed: Run seed, >= 0.
        epoch: Epoch number, >= 0.

    Returns:
        An integer in ``[0, 2**64)`` for ``torch.Generator.manual_seed``.
    """
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


def _bernoulli(probs: torch.Tensor, seed: int) -> torch.Tensor:
    """Binarize grey levels: ``out[i, j] ~ Bernoulli(probs[i, j])``, reproducibly.

    Args:
        probs: ``[N, D]`` float32 values in [0, 1].
        seed: Seed of the ``torch.Generator`` that draws the uniforms.

    Returns:
        ``[N, D]`` float32 tensor of 0s and 1s.
    """
    generator = torch.Generator().manual_seed(seed)
    uniforms = torch.rand(probs.shape, generator=generator)
    return uniforms.lt_(probs)  # in place: 1.0 where u < p, else 0.0, so P(1) = p


@dataclass
class Dataset:
    """Three splits of flattened data, ready for training.

    Attributes:
        name: Data set name or path of the user array file.
        train: ``[N_train, D]`` float32 (grey levels in dynamic mode).
        valid: ``[N_valid, D]`` float32.
        test: ``[N_test, D]`` float32.
        train_labels: ``[N_train]`` int64, or None.
        valid_labels: ``[N_valid]`` int64, or None.
        test_labels: ``[N_test]`` int64, or None.
        image_shape: ``(C, H, W)`` with ``C * H * W == D``, or None for
            non-image data.
        binarize: One of :data:`BINARIZE_MODES`.
    """

    name: str
    train: torch.Tensor = field(repr=False)
    valid: torch.Tensor = field(repr=False)
    test: torch.Tensor = field(repr=False)
    train_labels: Optional[torch.Tensor] = field(repr=False)
    valid_labels: Optional[torch.Tensor] = field(repr=False)
    test_labels: Optional[torch.Tensor] = field(repr=False)
    image_shape: Optional[Tuple[int, ...]]
    binarize: str

    @property
    def data_dim(self) -> int:
        """Number of values per example, ``D``."""
        return self.train.shape[1]

    def train_epoch(self, epoch: int, seed: int) -> torch.Tensor:
        """Training data for one epoch.

        In dynamic mode a fresh Bernoulli draw from the grey levels, made with a
        ``torch.Generator`` seeded with :func:`epoch_seed` ``(seed, epoch)``, so
        the same ``(epoch, seed)`` always gives the same data. Otherwise
        ``self.train``.

        Args:
            epoch: Epoch number, >= 0.
            seed: Run seed, >= 0.

        Returns:
            ``[N_train, D]`` float32.
        """
        if self.binarize == "dynamic":
            return _bernoulli(self.train, epoch_seed(seed, epoch))
        return self.train

    def split(self, name: str) -> torch.Tensor:
        """The ``[N, D]`` data of split ``name`` (``"train"``, ``"valid"`` or ``"test"``)."""
        return getattr(self, _check_split(name))

    def labels(self, name: str) -> Optional[torch.Tensor]:
        """The ``[N]`` int64 labels of split ``name``, or None if the data set has none."""
        return getattr(self, f"{_check_split(name)}_labels")


def _check_split(name: str) -> str:
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
    return name


@dataclass
class _Arrays:
    """Numpy splits as read from disk, before conversion to a :class:`Dataset`."""

    train: np.ndarray  # [N_train, D] float32
    valid: np.ndarray
    test: np.ndarray
    train_labels: Optional[np.ndarray]  # [N_train] int64 or None
    valid_labels: Optional[np.ndarray]
    test_labels: Optional[np.ndarray]
    image_shape: Optional[Tuple[int, ...]]


def load_dataset(
    name: str,
    data_dir: Optional[str] = None,
    binarize: str = "none",
    valid_size: Optional[int] = None,
    seed: int = 0,
    download: bool = False,
) -> Dataset:
    """Load a data set, split it and binarize it as asked.

    Args:
        name: One of :data:`DATASETS`, or a path ending in ``.npy``/``.npz``.
        data_dir: Directory holding the data files (see the module docstring
            for the layouts searched); defaults to :data:`DEFAULT_DATA_DIR`.
        binarize: One of :data:`BINARIZE_MODES`.
        valid_size: Number of training rows held out as the validation set;
            defaults to 180 for ``digits``, 10000 for MNIST and Fashion-MNIST,
            10% for user arrays. Not allowed where the data come with an
            official validation split (``binarized-mnist``, ``.npz`` with a
            ``valid`` array).
        seed: Seed of the permutation that picks the validation rows.
        download: Fetch missing MNIST / Fashion-MNIST / binarized MNIST files
            (needs internet).

    Returns:
        The :class:`Dataset`, every tensor float32 (labels int64) and contiguous.

    Raises:
        DataError: Unknown name or mode, missing or corrupt files, invalid
            values, or a ``valid_size`` that leaves no training rows.
    """
    if binarize not in BINARIZE_MODES:
        raise DataError(
            f"unknown binarize mode {binarize!r}; expected one of {', '.join(BINARIZE_MODES)}"
        )
    root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()

    if name.lower().endswith((".npy", ".npz")):
        arrays = _load_array_file(Path(name).expanduser(), valid_size, seed)
    elif name == "digits":
        arrays = _load_digits(valid_size, seed)
    elif name in _TORCHVISION_NAMES:
        arrays = _load_idx_dataset(name, root, valid_size, seed, download)
    elif name == "binarized-mnist":
        if binarize == "dynamic":
            raise DataError(
                "binarize='dynamic' makes no sense for binarized-mnist: its pixels are "
                "already 0/1 (a fixed binarization); use binarize='none' or 'static', or "
                "dataset 'mnist' with binarize='dynamic'"
            )
        if valid_size is not None:
            raise DataError(
                "binarized-mnist comes with an official 50000/10000/10000 split; "
                "valid_size cannot be changed"
            )
        arrays = _load_binarized_mnist(root, download)
    else:
        raise DataError(
            f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}, "
            "or a path to a .npy or .npz file"
        )
    return _to_dataset(name, arrays, binarize)


def _to_dataset(name: str, arrays: _Arrays, binarize: str) -> Dataset:
    """Check the values, convert to tensors and apply the binarization mode."""
    data = {}
    for split in SPLITS:
        x = getattr(arrays, split)
        if not np.isfinite(x).all():
            raise DataError(f"{name}: the {split} split contains NaN or infinite values")
        if binarize != "none" and (x.min() < 0 or x.max() > 1):
            raise DataError(
                f"{name}: binarize={binarize!r} needs values in [0, 1], but the {split} split "
                f"spans [{x.min():g}, {x.max():g}]; rescale the data or use binarize='none'"
            )
        data[split] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    if binarize != "none":
        if binarize == "static":
            data["train"] = _bernoulli(data["train"], STATIC_BINARIZATION_SEED)
        data["valid"] = _bernoulli(data["valid"], STATIC_BINARIZATION_SEED + 1)
        data["test"] = _bernoulli(data["test"], STATIC_BINARIZATION_SEED + 2)

    labels = {}
    for split in SPLITS:
        y = getattr(arrays, f"{split}_labels")
        labels[split] = None if y is None else torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    return Dataset(name=name, **_splits(data, labels), image_shape=arrays.image_shape, binarize=binarize)


# ----------------------------------------------------------------------------- splits


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
) -> _Arrays:
    """Hold out ``valid_size`` training rows (chosen by ``seed``) as the validation set."""
    kept, held = _hold_out(len(train), valid_size, seed, "valid_size")
    return _Arrays(
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


def _load_digits(valid_size: Optional[int], seed: int) -> _Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
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


def _find_idx_files(directory: Path) -> Optional[Dict[str, Path]]:
    """The four IDX files in ``directory`` (each plain or ``.gz``), or None if any is missing."""
    found = {}
    for key, base in _IDX_FILES.items():
        candidates = [directory / base, directory / f"{base}.gz"]
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            return None
        found[key] = existing[0]
    return found


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
    files = _find_idx_files(raw_dir)
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


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain or gzipped).

    Args:
        path: The file.
        magic: Expected magic number: 2051 for images, 2049 for labels.

    Returns:
        uint8 array with the dimensions from the header, e.g. ``[N, 28, 28]`` or ``[N]``.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(raw)} bytes, no header")
    (found_magic,) = struct.unpack(">I", raw[:4])
    if found_magic != magic:
        raise DataError(
            f"IDX file {path} has magic number {found_magic}, expected {magic} "
            f"({'images' if magic == _IDX_IMAGES_MAGIC else 'labels'}); corrupt or wrong file"
        )
    n_dims = magic & 0xFF
    header_size = 4 + 4 * n_dims
    if len(raw) < header_size:
        raise DataError(f"IDX file {path} is truncated inside its header")
    dims = struct.unpack(f">{n_dims}I", raw[4:header_size])
    expected_size = header_size + int(np.prod(dims))
    if len(raw) != expected_size:
        raise DataError(
            f"IDX file {path} has {len(raw)} bytes, but its header {dims} implies "
            f"{expected_size}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def _load_idx_dataset(
    name: str, root: Path, valid_size: Optional[int], seed: int, download: bool
) -> _Arrays:
    dirs = _idx_search_dirs(name, root)
    files = next((found for found in map(_find_idx_files, dirs) if found is not None), None)
    if files is None:
        if not download:
            raise DataError(_missing_idx_message(name, dirs))
        files = _download_torchvision(name, root)

    arrays = {}
    for split in ("train", "test"):
        images = _read_idx(files[f"{split}_images"], _IDX_IMAGES_MAGIC)
        labels = _read_idx(files[f"{split}_labels"], _IDX_LABELS_MAGIC)
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


def _read_amat(path: Path) -> np.ndarray:
    """Read a binarized-MNIST ``.amat`` file: one line of 784 whitespace-separated 0/1 per image.

    Returns:
        ``[N, 784]`` float32 of 0s and 1s.
    """
    rows = []
    line_numbers = []
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != _AMAT_PIXELS:
                raise DataError(
                    f"{path}, line {line_number}: expected {_AMAT_PIXELS} values, found {len(tokens)}"
                )
            row = b"".join(tokens)
            if len(row) != _AMAT_PIXELS:  # some token is longer than one character
                raise DataError(f"{path}, line {line_number}: values must be 0 or 1")
            rows.append(row)
            line_numbers.append(line_number)
    if not rows:
        raise DataError(f"{path} holds no data")
    digits = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, _AMAT_PIXELS) - np.uint8(ord("0"))
    bad_rows = np.flatnonzero((digits > 1).any(axis=1))  # characters other than '0'/'1' wrap above 1
    if len(bad_rows):
        raise DataError(f"{path}, line {line_numbers[bad_rows[0]]}: values must be 0 or 1")
    return digits.astype(np.float32)


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


def _load_binarized_mnist(root: Path, download: bool) -> _Arrays:
    dirs = [root, root / "binarized_mnist"]
    directory = next(
        (d for d in dirs if all((d / f).is_file() for f in _AMAT_FILES.values())), None
    )
    if directory is None:
        if not download:
            raise DataError(
                f"binarized-mnist not found: looked for {', '.join(_AMAT_FILES.values())} in "
                f"{', '.join(str(d) for d in dirs)}. Pass --download (download=True) on a machine "
                f"with internet, or fetch them from {BINARIZED_MNIST_URL} (split = train, valid, "
                "test) and put them into --data-dir (data_dir)"
            )
        for split, filename in _AMAT_FILES.items():
            if not (root / filename).is_file():
                _download_file(BINARIZED_MNIST_URL.format(split=split), root / filename)
        directory = root

    return _Arrays(
        **{split: _read_amat(directory / filename) for split, filename in _AMAT_FILES.items()},
        train_labels=None,
        valid_labels=None,
        test_labels=None,
        image_shape=(1, 28, 28),
    )


# ----------------------------------------------------------------------------- user arrays


def _check_data_array(x: np.ndarray, what: str) -> None:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {x.dtype}; expected numbers or booleans")
    if x.ndim < 2 or len(x) == 0:
        raise DataError(
            f"{what} has shape {x.shape}; expected [N, ...] with N >= 1 and at least 2 "
            "dimensions (reshape 1-D data to [N, 1])"
        )


def _splits(data, labels) -> dict:
    """``train=, valid=, test=, train_labels=, ...``: the per-split fields of a data set, from two dicts by split."""
    return {**{split: data[split] for split in SPLITS}, **{f"{split}_labels": labels[split] for split in SPLITS}}


def chw(image_shape) -> Tuple[int, int, int]:
    """An image shape ``(H, W)`` or ``(C, H, W)`` as ``(C, H, W)``, every size positive; a ``ValueError``
    naming the shape otherwise.  (The one reading of image shapes: networks and figures use it.)"""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W) or (C, H, W) with positive sizes, got {tuple(image_shape)}")
    return shape


def _image_shape(example_shape: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
    """``(1, H, W)`` for ``[H, W]`` examples, ``(C, H, W)`` for ``[C, H, W]``, else None."""
    if len(example_shape) == 2:
        return (1,) + example_shape
    if len(example_shape) == 3:
        return example_shape
    return None


def _to_unit_float(arrays: List[np.ndarray]) -> List[np.ndarray]:
    """Flatten to ``[N, D]`` float32; if all are uint8 with values above 1, divide by 255."""
    flat = [x.reshape(len(x), -1).astype(np.float32) for x in arrays]
    if all(x.dtype == np.uint8 for x in arrays) and max(x.max() for x in arrays) > 1:
        flat = [x / 255 for x in flat]
    return flat


def _read_array_file(path: Path) -> Dict[str, np.ndarray]:
    """The arrays of a ``.npy`` file (as ``{"train": array}``) or of a ``.npz`` archive."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            members = {"train": loaded}
        else:
            with loaded:
                members = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    is_npz = path.suffix.lower() == ".npz"
    if is_npz == isinstance(loaded, np.ndarray):
        raise DataError(f"{path} is not a {path.suffix} file (its content is the other numpy format)")
    return members


def _load_array_file(path: Path, valid_size: Optional[int], seed: int) -> _Arrays:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    members = _read_array_file(path)
    unknown = sorted(set(members) - set(NPZ_KEYS))
    if unknown:
        raise DataError(
            f"{path} has unknown keys {', '.join(unknown)}; accepted keys are {', '.join(NPZ_KEYS)}"
        )
    if "train" not in members:
        raise DataError(f"{path} has no 'train' array; accepted keys are {', '.join(NPZ_KEYS)}")

    data_keys = [key for key in SPLITS if key in members]
    for key in data_keys:
        _check_data_array(members[key], f"{path}[{key!r}]")
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

    data = dict(zip(data_keys, _to_unit_float([members[key] for key in data_keys])))
    labels = {split: members.get(f"{split}_labels") for split in SPLITS}
    image_shape = _image_shape(example_shape)

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
        return _Arrays(**_splits(data, labels), image_shape=image_shape)
    return _split_valid(
        data["train"],
        labels["train"],
        data["test"],
        labels["test"],
        valid_size if valid_size is not None else _holdout_size(len(data["train"])),
        seed,
        image_shape,
    )
