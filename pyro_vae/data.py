"""Data sets for the VAEs: loaders, binarization and train/valid/test splits.

Every loader returns a :class:`Dataset` holding flattened ``float32`` tensors of
shape ``[N, D]`` for the three splits ``train``, ``valid`` and ``test``. The
validation split is always held out from the training set, never from the test
set. This module knows nothing about models.

This is the user-facing module of three: :mod:`pyro_vae.formats` reads the
files (IDX, ``.amat``, ``.npy``/``.npz``), :mod:`pyro_vae.sources` knows where
each data set comes from and makes its raw splits, and this module turns them
into tensors, binarizes them and holds them in a :class:`Dataset`. Import from
here: the names of the other two that users need (:class:`DataError`, the
seeds, paths and keys below) are re-exported.

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
    ``binarized_mnist_valid.amat`` and ``binarized_mnist_test.amat``, each
    plain or gzipped (``.amat.gz``; plain is read if both exist), in
    ``data_dir`` or ``data_dir/binarized_mnist`` (so a folder such as
    ``../shared/data`` holding ``binarized_mnist/`` works as ``data_dir``);
    one image per line as 784 space-separated 0/1 values. The official
    50000/10000/10000 split is used as is, so ``valid_size`` may not be given.
    No labels. The test file is sorted by digit: take a subset of it by
    striding, never its first rows. ``download=True`` fetches missing files
    from :data:`BINARIZED_MNIST_URL` into ``data_dir``.
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
``[N, C, H, W]`` get ``(C, H, W)``, others ``None``. ``uint8`` pixels are
divided by 255 as ``scale_uint8`` says, with a line on stderr when they are:
``"auto"`` (default) where every array is uint8 with values above 1, ``"on"``
whenever they are uint8, ``"off"`` never (keep 0..255, e.g. for a Gaussian
likelihood on raw intensities). Other values are kept as they are, and values
outside [0, 1] are accepted only with ``binarize="none"``. Non-finite values
are refused.

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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from .formats import SCALE_UINT8_MODES, DataError
from .sources import (
    ARRAY_TEST_SPLIT_SEED,
    BINARIZED_MNIST_URL,
    DEBIAN_FASHION_MNIST_DIR,
    DIGITS_TEST_SPLIT_SEED,
    IDX_DATASETS,
    NPZ_KEYS,
    SPLITS,
    RawSplits,
    load_array_file,
    load_binarized_mnist,
    load_digits,
    load_idx,
    split_fields,
)

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
    "SCALE_UINT8_MODES",
    "STATIC_BINARIZATION_SEED",
    "epoch_seed",
    "load_dataset",
]

DATASETS = ("digits", "fashion-mnist", "mnist", "binarized-mnist")
BINARIZE_MODES = ("none", "static", "dynamic")

STATIC_BINARIZATION_SEED = 1234
"""Seed of the one-off binarizations: train (static mode) uses it, valid ``+ 1``, test ``+ 2``."""

DEFAULT_DATA_DIR = "~/.cache/pyro_vae"
"""Where data files are looked for (and downloaded to) when no ``data_dir`` is given."""


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


def load_dataset(
    name: str,
    data_dir: Optional[str] = None,
    binarize: str = "none",
    valid_size: Optional[int] = None,
    seed: int = 0,
    download: bool = False,
    scale_uint8: str = "auto",
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
        scale_uint8: For ``.npy``/``.npz`` files, one of
            :data:`SCALE_UINT8_MODES`: divide uint8 pixels by 255 where they
            exceed 1 (``"auto"``), always (``"on"``) or never (``"off"``).

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
        arrays = load_array_file(Path(name).expanduser(), valid_size, seed, scale_uint8)
    elif name == "digits":
        arrays = load_digits(valid_size, seed)
    elif name in IDX_DATASETS:
        arrays = load_idx(name, root, valid_size, seed, download)
    elif name == "binarized-mnist":
        if binarize == "dynamic":
            raise DataError(
                "binarize='dynamic' makes no sense for binarized-mnist: its pixels are "
                "already 0/1 (a fixed binarization); use binarize='none' or 'static', or "
                "dataset 'mnist' with binarize='dynamic'"
            )
        arrays = load_binarized_mnist(root, valid_size, download)
    else:
        raise DataError(
            f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}, "
            "or a path to a .npy or .npz file"
        )
    return _to_dataset(name, arrays, binarize)


def _to_dataset(name: str, arrays: RawSplits, binarize: str) -> Dataset:
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

    return Dataset(name=name, **split_fields(data, labels), image_shape=arrays.image_shape, binarize=binarize)


def evaluation_indices(n_rows: int, eval_points: Optional[int]) -> torch.Tensor:
    """Which of ``n_rows`` points to evaluate: ``eval_points`` of them spread evenly over the whole split,
    rows ``(i * n_rows) // eval_points`` for ``i < eval_points`` (every (n_rows / eval_points)-th row), or all
    rows when ``eval_points`` is None or not smaller than ``n_rows``.

    Never the first ``eval_points``: a split sorted by class would be measured on one class. Larochelle's
    binarized-MNIST test file is sorted by digit (its first 1000 rows are zeros, whose log p(x) is several
    nats higher than the average digit's).

    Returns:
        ``[M]`` int64 indices, increasing, ``M = min(eval_points, n_rows)``.
    """
    if eval_points is None or eval_points >= n_rows:
        return torch.arange(n_rows)
    return torch.arange(eval_points) * n_rows // eval_points


def chw(image_shape) -> Tuple[int, int, int]:
    """An image shape ``(H, W)`` or ``(C, H, W)`` as ``(C, H, W)``, every size positive; a ``ValueError``
    naming the shape otherwise.  (The one reading of image shapes: networks and figures use it.)"""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W) or (C, H, W) with positive sizes, got {tuple(image_shape)}")
    return shape
