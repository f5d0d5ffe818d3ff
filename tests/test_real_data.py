"""The loaders on the real benchmark files of ``../shared/data``; skipped where that folder is absent.

The folder is ``<repository>/../shared/data`` (CI clones the repository next to ``shared/``), or the folder named
by the environment variable ``PYRO_VAE_SHARED_DATA``. It holds MNIST's four gzipped IDX files in ``mnist/`` and
Larochelle's binarized MNIST as ``.amat.gz`` in ``binarized_mnist/``, with their checksums. Each data set is
loaded once per module (the 70,000 lines of ``.amat.gz`` take a few seconds).
"""
import gzip
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from experiments import binarized_mnist, common
from pyro_vae.checkpoint import SUMMARY
from pyro_vae.config import TrainConfig
from pyro_vae.data import evaluation_indices
from pyro_vae.data import load_dataset
from pyro_vae.formats import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PYRO_VAE_SHARED_DATA") or ROOT.parent / "shared" / "data")
AMAT_SPLITS = {"train": 50000, "valid": 10000, "test": 10000}
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def needs(subdir: str):
    folder = SHARED / subdir
    return pytest.mark.skipif(
        not folder.is_dir(),
        reason=f"real data not found: no folder {folder} (the shared data sit in ../shared/data next to the "
               "repository, as in CI; elsewhere set PYRO_VAE_SHARED_DATA to that folder)",
    )


def checksums(path: Path) -> dict:
    """``{file name: hex digest}`` from a ``sha256sum`` / ``md5sum`` listing."""
    return {name: digest for digest, name in (line.split() for line in path.read_text().splitlines() if line.strip())}


@pytest.fixture(scope="module")
def binarized():
    """Static binarized MNIST read from the .amat.gz files, found through a ../shared/data-style folder."""
    return load_dataset("binarized-mnist", data_dir=str(SHARED))


@pytest.fixture(scope="module")
def mnist():
    """MNIST read from the gzipped IDX files under SHARED/mnist, with the default 10000-image validation split."""
    return load_dataset("mnist", data_dir=str(SHARED))


# ----------------------------------------------------------------------------- the files as stored


@pytest.mark.parametrize("subdir, count", [pytest.param("binarized_mnist", 3, marks=needs("binarized_mnist")),
                                           pytest.param("mnist", 4, marks=needs("mnist"))])
def test_stored_files_match_sha256sums(subdir, count):
    listed = {name: digest for name, digest in checksums(SHARED / "SHA256SUMS").items()
              if name.startswith(subdir + "/")}
    assert len(listed) == count
    for name, digest in listed.items():
        assert hashlib.sha256((SHARED / name).read_bytes()).hexdigest() == digest, name


@needs("binarized_mnist")
def test_decompressed_amat_files_match_published_sha256():
    expected = checksums(SHARED / "binarized_mnist" / "SHA256SUMS.uncompressed")
    assert sorted(expected) == sorted(f"binarized_mnist_{split}.amat" for split in AMAT_SPLITS)
    for name, digest in expected.items():
        raw = gzip.decompress((SHARED / "binarized_mnist" / f"{name}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest, name


@needs("mnist")
def test_decompressed_idx_files_match_published_md5():
    expected = checksums(SHARED / "mnist" / "MD5SUMS.uncompressed")
    assert sorted(expected) == sorted(IDX_NAMES)
    for name, digest in expected.items():
        raw = gzip.decompress((SHARED / "mnist" / f"{name}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == digest, name


# ----------------------------------------------------------------------------- static binarized MNIST


def amat_bytes(x: torch.Tensor) -> bytes:
    """``[N, 784]`` 0/1 rows written as an ``.amat`` file: 784 digits separated by spaces, one line each."""
    out = np.full((len(x), 2 * 784), ord(" "), dtype=np.uint8)
    out[:, 0::2] = x.numpy().astype(np.uint8) + ord("0")
    out[:, -1] = ord("\n")
    return out.tobytes()


@needs("binarized_mnist")
def test_static_binarized_mnist_from_amat_gz(binarized):
    expected = checksums(SHARED / "binarized_mnist" / "SHA256SUMS.uncompressed")
    assert binarized.image_shape == (1, 28, 28) and binarized.binarize == "none"
    for split, n in AMAT_SPLITS.items():
        x = binarized.split(split)
        assert x.shape == (n, 784) and x.dtype == torch.float32
        assert ((x == 0) | (x == 1)).all()
        assert binarized.labels(split) is None
        # written back as text, the loaded rows are the published file byte for byte (same rows, same order)
        assert hashlib.sha256(amat_bytes(x)).hexdigest() == expected[f"binarized_mnist_{split}.amat"], split


@needs("binarized_mnist")
def test_evaluation_subset_strides_over_the_sorted_test_file(binarized):
    """Larochelle's test file is sorted by digit (the ink of its 1000-row blocks jumps between digits), so a
    subset of it that is its first N points measures one digit; every subset the studies take strides."""
    ink = binarized.test.sum(1)                                               # [10000] pixels on per image
    blocks = ink.reshape(10, 1000).mean(1)
    assert blocks[0] > ink.mean() + 20 and blocks[1] < ink.mean() - 30       # zeros, then ones: sorted
    n = len(binarized.test)
    budgets = [b.get("curve_points") for b in binarized_mnist.BUDGETS.values() if b.get("curve_points")]
    assert 1000 in budgets
    for points in budgets + [250]:
        index = evaluation_indices(n, points)
        assert len(index) == points and index[0] == 0 and index[-1] >= n - n // points
        assert (index.diff() > 0).all()
        assert (index < 1000).sum() <= points // 10 + 1                       # not all, nor most, from the zeros
    index = evaluation_indices(n, 250)
    assert torch.equal(index, torch.arange(0, n, 40))
    assert abs(ink[index].mean() - ink.mean()) < 2 < abs(ink[:250].mean() - ink.mean())
    assert torch.equal(evaluation_indices(n, None), torch.arange(n))


@needs("binarized_mnist")
def test_run_one_evaluates_the_strided_subset(binarized, tmp_path, monkeypatch):
    """The studies' run_one hands evaluate() every 40th test (and training) point for 250 points, not the first 250."""
    config = TrainConfig(dataset="binarized-mnist", binarize="none", data_dir=str(SHARED), out=str(tmp_path))
    evaluated = []

    def fake_evaluate(model, guide, x, num_samples, **kwargs):
        evaluated.append(x)
        return SimpleNamespace(mean=0.0, stderr=0.0, elbo=0.0, active_units=0, iwae_curve=[])

    monkeypatch.setattr(common, "train", lambda config, **kw: SimpleNamespace(
        stop_reason="completed", written=(tmp_path / SUMMARY).write_text("{}")))
    monkeypatch.setattr(common, "load_vae", lambda out: (SimpleNamespace(model=None, guide=None), config))
    monkeypatch.setattr(common, "config_dataset", lambda *args, **kwargs: binarized)
    monkeypatch.setattr(common, "evaluate", fake_evaluate)
    record = common.run_one("VAE k=1", 0, config, 5, tmp_path, eval_points=250, train_gap="strided")
    test_points, train_points = evaluated
    assert torch.equal(test_points, binarized.test[::40]) and not torch.equal(test_points, binarized.test[:250])
    assert torch.equal(train_points, binarized.train[::200])
    assert record["eval_points"] == 250


# ----------------------------------------------------------------------------- MNIST


@needs("mnist")
def test_mnist_idx_gz_files():
    counts = {"train": 60000, "t10k": 10000}
    for prefix, n in counts.items():
        images = read_idx(SHARED / "mnist" / f"{prefix}-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)
        labels = read_idx(SHARED / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
        assert images.shape == (n, 28, 28) and labels.shape == (n,)
        assert set(np.unique(labels)) == set(range(10))


@needs("mnist")
def test_mnist_default_split(mnist):
    assert (len(mnist.train), len(mnist.valid), len(mnist.test)) == (50000, 10000, 10000)
    assert mnist.data_dim == 784 and mnist.image_shape == (1, 28, 28) and mnist.binarize == "none"
    for split in AMAT_SPLITS:
        x, y = mnist.split(split), mnist.labels(split)
        assert x.min() == 0 and x.max() == 1
        assert y.dtype == torch.int64 and len(y) == len(x) and set(y.unique().tolist()) == set(range(10))
    # the validation rows are held out of the 60000 training images: together they are the training file
    raw_labels = read_idx(SHARED / "mnist" / "train-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
    held = torch.cat([mnist.train_labels, mnist.valid_labels])
    assert torch.equal(held.bincount(minlength=10), torch.from_numpy(np.bincount(raw_labels, minlength=10)))
