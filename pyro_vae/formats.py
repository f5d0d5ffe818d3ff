"""File formats of the data sets: readers that turn one file into numpy arrays, and the checks on arrays.

This module knows file formats, not data sets: which files make up MNIST, where they are looked for and how
they are split is :mod:`pyro_vae.sources`; tensors, binarization and :class:`~pyro_vae.data.Dataset` are
:mod:`pyro_vae.data`. Every reader raises :class:`DataError` naming the file and what is wrong with it.

Formats:

IDX (:func:`read_idx`)
    LeCun's format of MNIST and Fashion-MNIST, plain or gzipped (``.gz``): a big-endian header (magic number
    :data:`IDX_IMAGES_MAGIC` for ``[N, H, W]`` images, :data:`IDX_LABELS_MAGIC` for ``[N]`` labels, then one
    size per dimension) and the unsigned bytes.
``.amat`` (:func:`read_amat`)
    Larochelle's binarized MNIST, plain or gzipped (``.amat.gz``): one image a line, :data:`AMAT_PIXELS`
    whitespace-separated 0/1 values.
``.npy`` / ``.npz`` (:func:`read_array_file`)
    numpy's own formats, read without pickles.

Shapes: ``N`` examples, ``D`` values per flattened example.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = [
    "AMAT_PIXELS",
    "DataError",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "check_data_array",
    "image_shape_of",
    "read_amat",
    "read_array_file",
    "read_idx",
    "SCALE_UINT8_MODES",
    "to_unit_float",
]

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

AMAT_PIXELS = 784
"""Values per line of a binarized-MNIST ``.amat`` file (28 x 28)."""

_DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError; truncation EOFError


class DataError(ValueError):
    """A data set cannot be found, read or split as asked; the message says why."""


def _is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


# ----------------------------------------------------------------------------- IDX


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain, or gzipped when its name ends in ``.gz``).

    Args:
        path: The file.
        magic: Expected magic number: :data:`IDX_IMAGES_MAGIC` (2051) for images, :data:`IDX_LABELS_MAGIC`
            (2049) for labels.

    Returns:
        uint8 array with the dimensions from the header, e.g. ``[N, 28, 28]`` or ``[N]``.

    Raises:
        DataError: The file cannot be read or decompressed, has another magic number, or its size does not
            match its header (truncated or corrupt).
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if _is_gzip(path) else path.read_bytes()
    except _DECOMPRESSION_ERRORS as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(raw)} bytes, no header")
    (found_magic,) = struct.unpack(">I", raw[:4])
    if found_magic != magic:
        raise DataError(
            f"IDX file {path} has magic number {found_magic}, expected {magic} "
            f"({'images' if magic == IDX_IMAGES_MAGIC else 'labels'}); corrupt or wrong file"
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


# ----------------------------------------------------------------------------- .amat


def read_amat(path: Path) -> np.ndarray:
    """Read a binarized-MNIST ``.amat`` file: one line of 784 whitespace-separated 0/1 per image.

    A name ending in ``.gz`` (``binarized_mnist_test.amat.gz``) is decompressed while reading. Blank lines
    are skipped.

    Returns:
        ``[N, 784]`` float32 of 0s and 1s, in the order of the file's lines.

    Raises:
        DataError: A line without exactly 784 values, a value other than 0 or 1 (naming the file and line),
            no data at all, or a file that cannot be read or decompressed (a corrupt or truncated ``.gz``).
    """
    rows = []
    line_numbers = []
    try:
        with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as handle:
            for line_number, line in enumerate(handle, start=1):
                tokens = line.split()
                if not tokens:
                    continue
                if len(tokens) != AMAT_PIXELS:
                    raise DataError(
                        f"{path}, line {line_number}: expected {AMAT_PIXELS} values, found {len(tokens)}"
                    )
                row = b"".join(tokens)
                if len(row) != AMAT_PIXELS:  # some token is longer than one character
                    raise DataError(f"{path}, line {line_number}: values must be 0 or 1")
                rows.append(row)
                line_numbers.append(line_number)
    except _DECOMPRESSION_ERRORS as exc:  # a corrupt or truncated .gz (or an unreadable file)
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not rows:
        raise DataError(f"{path} holds no data")
    digits = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, AMAT_PIXELS) - np.uint8(ord("0"))
    bad_rows = np.flatnonzero((digits > 1).any(axis=1))  # characters other than '0'/'1' wrap above 1
    if len(bad_rows):
        raise DataError(f"{path}, line {line_numbers[bad_rows[0]]}: values must be 0 or 1")
    return digits.astype(np.float32)


# ----------------------------------------------------------------------------- numpy files


def read_array_file(path: Path) -> Dict[str, np.ndarray]:
    """The arrays of a ``.npy`` file (as ``{"train": array}``) or of a ``.npz`` archive (by key).

    Raises:
        DataError: The file cannot be read, needs pickles, or holds the other numpy format than its suffix
            says.
    """
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


# ----------------------------------------------------------------------------- arrays


def check_data_array(x: np.ndarray, what: str) -> None:
    """Refuse an array that cannot be data: ``[N, ...]`` numbers or booleans, ``N >= 1``, at least 2-D.

    Raises:
        DataError: naming ``what`` (e.g. ``"d.npz['train']"``), its dtype or shape, and what was expected.
    """
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {x.dtype}; expected numbers or booleans")
    if x.ndim < 2 or len(x) == 0:
        raise DataError(
            f"{what} has shape {x.shape}; expected [N, ...] with N >= 1 and at least 2 "
            "dimensions (reshape 1-D data to [N, 1])"
        )


def image_shape_of(example_shape: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
    """The image shape of examples of shape ``example_shape`` (one row without ``N``).

    ``(1, H, W)`` for ``[H, W]`` examples, ``(C, H, W)`` for ``[C, H, W]``, else None (not images).
    """
    if len(example_shape) == 2:
        return (1,) + example_shape
    if len(example_shape) == 3:
        return example_shape
    return None


SCALE_UINT8_MODES = ("auto", "on", "off")


def to_unit_float(arrays: List[np.ndarray], scale_uint8: str = "auto",
                  what: str = "the data") -> Tuple[List[np.ndarray], Optional[str]]:
    """Flatten each ``[N, ...]`` array to ``[N, D]`` float32, dividing uint8 pixels by 255 as ``scale_uint8``
    says: ``auto`` where all arrays are uint8 with values above 1, ``on`` whenever they are uint8 (other dtypes
    are an error), ``off`` never.  The arrays are scaled together (all or none), so splits of one data set stay
    comparable.  Returns the arrays and a one-line note saying what was divided (None when nothing was).

    Raises:
        DataError: An unknown mode, or ``on`` for data that are not uint8.
    """
    if scale_uint8 not in SCALE_UINT8_MODES:
        raise DataError(f"scale_uint8 must be one of {', '.join(SCALE_UINT8_MODES)}, got {scale_uint8!r}")
    flat = [x.reshape(len(x), -1).astype(np.float32) for x in arrays]
    uint8 = all(x.dtype == np.uint8 for x in arrays)
    if scale_uint8 == "on" and not uint8:
        raise DataError(f"scale_uint8='on' divides uint8 data by 255, but {what} holds "
                        f"{', '.join(sorted({str(x.dtype) for x in arrays}))}; use 'auto' or 'off'")
    top = max(int(x.max()) for x in arrays) if uint8 else 0
    if scale_uint8 == "off" or not uint8 or (scale_uint8 == "auto" and top <= 1):
        return flat, None
    note = (f"{what}: uint8 values 0..{top} divided by 255 into [0, 1] (scale_uint8={scale_uint8!r}; "
            f"'off', or --scale-uint8 off, keeps them as they are)")
    return [x / 255 for x in flat], note
