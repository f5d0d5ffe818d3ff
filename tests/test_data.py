"""Tests of pyro_vae.data: file formats, splits and binarization, on small files written here."""

import gzip
import io
import struct
import sys
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pyro_vae import data, sources
from pyro_vae.data import DataError, load_dataset

N_TRAIN, N_TEST, VALID = 50, 20, 10
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
AMAT_ROWS = {"train": 30, "valid": 10, "test": 10}


# ----------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    payload = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def make_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random 28x28 uint8 images whose first pixel is the image's index, to identify rows."""
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)
    return images


def write_idx_dataset(directory: Path, gz: bool) -> dict:
    """Write the four IDX files into ``directory`` and return the arrays written."""
    rng = np.random.default_rng(7)
    arrays = {
        "train_images": make_images(N_TRAIN, rng),
        "train_labels": rng.integers(0, 10, size=N_TRAIN, dtype=np.uint8),
        "test_images": make_images(N_TEST, rng),
        "test_labels": rng.integers(0, 10, size=N_TEST, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for key, name in zip(arrays, IDX_NAMES):
        write_idx(directory / f"{name}{suffix}", arrays[key], 2051 if "images" in key else 2049)
    return arrays


def row_ids(x: torch.Tensor) -> np.ndarray:
    """Row indices encoded in the first pixel by make_images."""
    return np.rint(x[:, 0].numpy() * 255).astype(int)


def write_amat(path: Path, rows: np.ndarray) -> None:
    path.write_text("".join(" ".join(map(str, row)) + "\n" for row in rows))


def write_amat_dataset(directory: Path) -> dict:
    rng = np.random.default_rng(3)
    arrays = {split: rng.integers(0, 2, size=(n, 784)) for split, n in AMAT_ROWS.items()}
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in arrays.items():
        write_amat(directory / f"binarized_mnist_{split}.amat", rows)
    return arrays


@pytest.fixture
def no_debian_fashion(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian-package"))


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("layout", ["flat", "torchvision", "named"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_dataset_values_labels_and_splits(tmp_path, no_debian_fashion, name, layout, gz):
    subdir = {"flat": ".", "torchvision": {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name] + "/raw",
              "named": name}[layout]
    arrays = write_idx_dataset(tmp_path / subdir, gz)

    ds = load_dataset(name, data_dir=str(tmp_path), valid_size=VALID, seed=5)

    assert ds.name == name and ds.image_shape == (1, 28, 28) and ds.binarize == "none"
    assert ds.train.shape == (N_TRAIN - VALID, 784) and ds.valid.shape == (VALID, 784)
    assert ds.test.shape == (N_TEST, 784) and ds.data_dim == 784
    for split in ("train", "valid", "test"):
        x, y = ds.split(split), ds.labels(split)
        assert x.dtype == torch.float32 and x.is_contiguous()
        assert y.dtype == torch.int64 and len(y) == len(x)

    train_ids, valid_ids = row_ids(ds.train), row_ids(ds.valid)
    assert set(train_ids).isdisjoint(valid_ids)
    assert sorted(np.concatenate([train_ids, valid_ids])) == list(range(N_TRAIN))
    flat = torch.from_numpy(arrays["train_images"].reshape(N_TRAIN, 784).astype(np.float32)) / 255
    assert torch.equal(ds.train, flat[train_ids]) and torch.equal(ds.valid, flat[valid_ids])
    assert torch.equal(ds.train_labels, torch.from_numpy(arrays["train_labels"][train_ids].astype(np.int64)))
    assert torch.equal(ds.valid_labels, torch.from_numpy(arrays["train_labels"][valid_ids].astype(np.int64)))
    test_flat = torch.from_numpy(arrays["test_images"].reshape(N_TEST, 784).astype(np.float32)) / 255
    assert torch.equal(ds.test, test_flat)
    assert torch.equal(ds.test_labels, torch.from_numpy(arrays["test_labels"].astype(np.int64)))


def test_valid_split_depends_on_seed_only(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    first = load_dataset("mnist", data_dir=str(tmp_path), valid_size=VALID, seed=1)
    again = load_dataset("mnist", data_dir=str(tmp_path), valid_size=VALID, seed=1)
    other = load_dataset("mnist", data_dir=str(tmp_path), valid_size=VALID, seed=2)
    assert torch.equal(first.valid, again.valid) and torch.equal(first.train, again.train)
    assert set(row_ids(first.valid)) != set(row_ids(other.valid))
    assert torch.equal(first.test, other.test)


@pytest.mark.parametrize("valid_size", [0, N_TRAIN, N_TRAIN + 1])
def test_impossible_valid_size(tmp_path, valid_size):
    write_idx_dataset(tmp_path, gz=False)
    with pytest.raises(DataError, match="valid_size"):
        load_dataset("mnist", data_dir=str(tmp_path), valid_size=valid_size)


def test_fashion_mnist_falls_back_to_debian_dir(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_idx_dataset(debian, gz=True)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(debian))
    (tmp_path / "empty").mkdir()
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path / "empty"), valid_size=VALID)
    assert len(ds.train) == N_TRAIN - VALID and len(ds.test) == N_TEST


def test_missing_mnist_message(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    message = str(info.value)
    for name in IDX_NAMES:
        assert name in message
    assert str(tmp_path) in message and str(tmp_path / "MNIST" / "raw") in message
    assert "--download" in message and "--data-dir" in message
    assert "dataset-fashion-mnist" not in message


def test_missing_fashion_mnist_message(tmp_path, no_debian_fashion):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    message = str(info.value)
    for name in IDX_NAMES:
        assert name in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "dataset-fashion-mnist" in message and "--download" in message


def test_partial_idx_files_are_not_enough(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=str(tmp_path), valid_size=VALID)


def corrupt_bad_magic(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[:4] = struct.pack(">I", 1234)
    path.write_bytes(bytes(raw))


def corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def corrupt_header_only(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:6])


@pytest.mark.parametrize("corrupt", [corrupt_bad_magic, corrupt_truncate, corrupt_header_only])
def test_corrupt_idx_names_the_file(tmp_path, corrupt):
    write_idx_dataset(tmp_path, gz=False)
    corrupt(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=str(tmp_path), valid_size=VALID)


def test_labels_file_with_images_magic(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(N_TEST, np.uint8), 2051)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*2049"):
        load_dataset("mnist", data_dir=str(tmp_path), valid_size=VALID)


def test_truncated_gzip_names_the_file(tmp_path):
    write_idx_dataset(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_dir=str(tmp_path), valid_size=VALID)


def test_image_and_label_counts_must_match(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(N_TRAIN - 1, np.uint8), 2049)
    with pytest.raises(DataError, match="labels"):
        load_dataset("mnist", data_dir=str(tmp_path), valid_size=VALID)


def fake_torchvision(monkeypatch, mnist_class) -> None:
    """Stand in for torchvision (slow to import) with a datasets.MNIST of our own."""
    monkeypatch.setitem(sys.modules, "torchvision", SimpleNamespace(datasets=SimpleNamespace(MNIST=mnist_class)))


def test_torchvision_download_reads_its_raw_folder(tmp_path, monkeypatch):
    class FakeMNIST:  # torchvision keeps the IDX files in <root>/<class name>/raw
        def __init__(self, root, download):
            assert download
            write_idx_dataset(Path(root) / "MNIST" / "raw", gz=False)

    fake_torchvision(monkeypatch, FakeMNIST)
    ds = load_dataset("mnist", data_dir=str(tmp_path), valid_size=VALID, download=True)
    assert len(ds.train) + len(ds.valid) == N_TRAIN


def test_torchvision_download_failure_is_a_data_error(tmp_path, monkeypatch):
    class OfflineMNIST:
        def __init__(self, root, download):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    fake_torchvision(monkeypatch, OfflineMNIST)
    with pytest.raises(DataError, match="Error downloading"):
        load_dataset("mnist", data_dir=str(tmp_path), download=True)


# ----------------------------------------------------------------------------- binarized MNIST


@pytest.mark.parametrize("subdir", [".", "binarized_mnist"])
@pytest.mark.parametrize("binarize", ["none", "static"])
def test_binarized_mnist_exact_values(tmp_path, subdir, binarize):
    arrays = write_amat_dataset(tmp_path / subdir)
    ds = load_dataset("binarized-mnist", data_dir=str(tmp_path), binarize=binarize)
    for split, rows in arrays.items():
        assert torch.equal(ds.split(split), torch.tensor(rows, dtype=torch.float32))
        assert ds.labels(split) is None
    assert ds.image_shape == (1, 28, 28)
    assert torch.equal(ds.train_epoch(0, 0), ds.train)


def test_binarized_mnist_refuses_dynamic_and_valid_size(tmp_path):
    write_amat_dataset(tmp_path)
    with pytest.raises(DataError, match="already"):
        load_dataset("binarized-mnist", data_dir=str(tmp_path), binarize="dynamic")
    with pytest.raises(DataError, match="official"):
        load_dataset("binarized-mnist", data_dir=str(tmp_path), valid_size=5)


@pytest.mark.parametrize(
    "bad_line, message",
    [("0 " * 783, "line 3: expected 784 values, found 783"), ("0 " * 783 + "2", "line 3: values must be 0 or 1"),
     ("0 " * 783 + "10", "line 3: values must be 0 or 1")],
    ids=["783-values", "value-2", "two-digit"],
)
def test_bad_amat_row(tmp_path, bad_line, message):
    write_amat_dataset(tmp_path)
    path = tmp_path / "binarized_mnist_valid.amat"
    lines = path.read_text().splitlines()
    lines[2] = bad_line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"binarized_mnist_valid.amat, {message}"):
        load_dataset("binarized-mnist", data_dir=str(tmp_path))


def test_missing_binarized_mnist_message(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("binarized-mnist", data_dir=str(tmp_path))
    message = str(info.value)
    for split in AMAT_ROWS:
        assert f"binarized_mnist_{split}.amat" in message
    assert "--download" in message and str(tmp_path) in message


def test_binarized_mnist_download(tmp_path, monkeypatch):
    arrays = write_amat_dataset(tmp_path / "server")
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO((tmp_path / "server" / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(sources.urllib.request, "urlopen", fake_urlopen)
    target = tmp_path / "data"
    ds = load_dataset("binarized-mnist", data_dir=str(target), download=True)
    assert sorted(requested) == sorted(data.BINARIZED_MNIST_URL.format(split=s) for s in AMAT_ROWS)
    assert sorted(p.name for p in target.iterdir()) == sorted(f"binarized_mnist_{s}.amat" for s in AMAT_ROWS)
    assert torch.equal(ds.test, torch.tensor(arrays["test"], dtype=torch.float32))


def test_binarized_mnist_download_failure(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="binarized_mnist_train.amat failed.*no route to host"):
        load_dataset("binarized-mnist", data_dir=str(tmp_path), download=True)
    assert list(tmp_path.iterdir()) == []



def gzip_in_place(path: Path) -> Path:
    """Replace ``path`` by ``path.gz`` holding the same bytes gzipped; return the new path."""
    target = path.with_name(path.name + ".gz")
    target.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return target


@pytest.mark.parametrize("subdir", [".", "binarized_mnist"])
@pytest.mark.parametrize("gzipped", [("train", "valid", "test"), ("test",)], ids=["all-gz", "mixed"])
def test_binarized_mnist_reads_amat_gz(tmp_path, subdir, gzipped):
    arrays = write_amat_dataset(tmp_path / subdir)
    for split in gzipped:
        gzip_in_place(tmp_path / subdir / f"binarized_mnist_{split}.amat")
    ds = load_dataset("binarized-mnist", data_dir=str(tmp_path))
    for split, rows in arrays.items():
        assert torch.equal(ds.split(split), torch.tensor(rows, dtype=torch.float32))


def test_plain_amat_wins_over_gz(tmp_path):
    arrays = write_amat_dataset(tmp_path)
    write_amat(tmp_path / "stale.amat", np.ones((AMAT_ROWS["test"], 784), dtype=int))
    gzip_in_place(tmp_path / "stale.amat").rename(tmp_path / "binarized_mnist_test.amat.gz")
    ds = load_dataset("binarized-mnist", data_dir=str(tmp_path))
    assert torch.equal(ds.test, torch.tensor(arrays["test"], dtype=torch.float32))


@pytest.mark.parametrize("damage", ["truncated", "not-gzip"])
def test_corrupt_amat_gz_names_the_file(tmp_path, damage):
    write_amat_dataset(tmp_path)
    path = gzip_in_place(tmp_path / "binarized_mnist_valid.amat")
    path.write_bytes(path.read_bytes()[:200] if damage == "truncated" else b"plain text, not gzip")
    with pytest.raises(DataError, match="binarized_mnist_valid.amat.gz"):
        load_dataset("binarized-mnist", data_dir=str(tmp_path))


def test_bad_row_in_amat_gz_names_file_and_line(tmp_path):
    write_amat_dataset(tmp_path)
    path = tmp_path / "binarized_mnist_test.amat"
    lines = path.read_text().splitlines()
    lines[4] = "0 " * 783 + "7"
    path.write_text("\n".join(lines) + "\n")
    gzip_in_place(path)
    with pytest.raises(DataError, match="binarized_mnist_test.amat.gz, line 5: values must be 0 or 1"):
        load_dataset("binarized-mnist", data_dir=str(tmp_path))


def test_missing_binarized_mnist_message_names_ways_that_work(tmp_path):
    """The CLI has --download (pyro-vae train, python -m experiments run), Python has download=True, and a
    folder such as ../shared/data, holding binarized_mnist/, works as --data-dir."""
    with pytest.raises(DataError) as info:
        load_dataset("binarized-mnist", data_dir=str(tmp_path))
    message = str(info.value)
    for split in AMAT_ROWS:
        assert f"binarized_mnist_{split}.amat[.gz]" in message
    assert str(tmp_path / "binarized_mnist") in message
    assert "pyro-vae train --dataset binarized-mnist --download" in message and "download=True" in message
    assert "python -m experiments run" in message
    assert "--data-dir ../shared/data" in message and "binarized_mnist/" in message


def test_binarized_mnist_download_keeps_gzipped_files(tmp_path, monkeypatch):
    arrays = write_amat_dataset(tmp_path / "server")
    target = tmp_path / "data"
    target.mkdir()
    (target / "binarized_mnist_train.amat.gz").write_bytes(
        gzip.compress((tmp_path / "server" / "binarized_mnist_train.amat").read_bytes()))
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url.rsplit("/", 1)[1])
        return io.BytesIO((tmp_path / "server" / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(sources.urllib.request, "urlopen", fake_urlopen)
    ds = load_dataset("binarized-mnist", data_dir=str(target), download=True)
    assert sorted(requested) == ["binarized_mnist_test.amat", "binarized_mnist_valid.amat"]
    assert torch.equal(ds.train, torch.tensor(arrays["train"], dtype=torch.float32))


# ----------------------------------------------------------------------------- user arrays


def test_npy_2d_float_split(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    x[:, 0] = np.arange(50)  # identifies rows; values outside [0, 1] are fine without binarization
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(str(tmp_path / "x.npy"))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (41, 4, 5)
    assert ds.image_shape is None and ds.train_labels is None and ds.data_dim == 3
    ids = np.concatenate([ds.train[:, 0], ds.valid[:, 0], ds.test[:, 0]]).astype(int)
    assert sorted(ids) == list(range(50))
    assert torch.equal(ds.train, torch.from_numpy(x[ds.train[:, 0].numpy().astype(int)].astype(np.float32)))
    other_seed = load_dataset(str(tmp_path / "x.npy"), seed=1)
    assert torch.equal(ds.test, other_seed.test) and not torch.equal(ds.valid, other_seed.valid)


def test_npy_3d_uint8_is_scaled(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(30, 4, 5), dtype=np.uint8)
    x[:, 0, 0] = np.arange(30)  # identifies rows
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(str(tmp_path / "x.npy"), valid_size=3)
    assert ds.image_shape == (1, 4, 5) and ds.data_dim == 20
    everything = torch.cat([ds.train, ds.valid, ds.test])
    expected = torch.from_numpy(x.reshape(30, 20).astype(np.float32)) / 255
    assert torch.equal(everything, expected[row_ids(everything)])
    assert sorted(row_ids(everything)) == list(range(30))


def test_uint8_scaling_is_said_and_follows_scale_uint8(tmp_path, capsys):
    """uint8 pixels are divided by 255 only as scale_uint8 says, and a line on stderr says when they are."""
    x = np.random.default_rng(0).integers(0, 256, size=(30, 6), dtype=np.uint8)
    x[0, 0] = 255
    np.save(tmp_path / "x.npy", x)
    path = str(tmp_path / "x.npy")
    auto = load_dataset(path)
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "uint8 values 0..255 divided by 255" in said and "--scale-uint8 off" in said
    assert max(auto.train.max(), auto.test.max()) == 1.0
    off = load_dataset(path, scale_uint8="off")
    assert capsys.readouterr().err == ""
    assert max(off.train.max(), off.test.max()) == 255.0 and torch.equal(off.train / 255, auto.train)
    assert torch.equal(load_dataset(path, scale_uint8="on").train, auto.train)
    assert "(scale_uint8='on';" in capsys.readouterr().err
    # 0/1 uint8 masks: auto keeps them (binary already), on divides them, silently neither for float data
    np.save(tmp_path / "mask.npy", (x > 127).astype(np.uint8))
    assert load_dataset(str(tmp_path / "mask.npy")).train.max() == 1.0 and capsys.readouterr().err == ""
    assert load_dataset(str(tmp_path / "mask.npy"), scale_uint8="on").train.max() == pytest.approx(1 / 255)
    assert "uint8 values 0..1 divided by 255" in capsys.readouterr().err
    np.save(tmp_path / "f.npy", x.astype(np.float32))
    with pytest.raises(DataError, match="scale_uint8='on' divides uint8 data by 255, but .* holds float32"):
        load_dataset(str(tmp_path / "f.npy"), scale_uint8="on")
    with pytest.raises(DataError, match="scale_uint8 must be one of auto, on, off"):
        load_dataset(path, scale_uint8="yes")


def test_npz_with_all_splits_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "train": rng.random((20, 2, 3, 3)), "valid": rng.random((5, 2, 3, 3)), "test": rng.random((6, 2, 3, 3)),
        "train_labels": np.arange(20), "valid_labels": np.arange(5), "test_labels": np.arange(6),
    }
    np.savez(tmp_path / "d.npz", **arrays)
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert ds.image_shape == (2, 3, 3)
    for split in ("train", "valid", "test"):
        assert torch.equal(ds.split(split), torch.from_numpy(arrays[split].reshape(len(arrays[split]), -1)).float())
        assert torch.equal(ds.labels(split), torch.from_numpy(arrays[f"{split}_labels"]).long())
    with pytest.raises(DataError, match="valid_size"):
        load_dataset(str(tmp_path / "d.npz"), valid_size=2)


def test_npz_holds_out_missing_splits_with_labels(tmp_path):
    x = np.repeat(np.arange(40, dtype=np.float32)[:, None] / 40, 4, axis=1)
    np.savez(tmp_path / "d.npz", train=x, train_labels=np.arange(40))
    ds = load_dataset(str(tmp_path / "d.npz"), valid_size=6)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (30, 6, 4)
    for split in ("train", "valid", "test"):
        assert torch.equal(ds.labels(split), (ds.split(split)[:, 0] * 40).round().long())


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"train": np.zeros((10, 2)), "x_train": np.zeros((10, 2))}, "unknown keys x_train.*accepted keys are train"),
        ({"test": np.zeros((10, 2))}, "no 'train'"),
        ({"train": np.zeros((10, 2)), "test": np.zeros((5, 3))}, "shape"),
        ({"train": np.zeros((10, 2)), "train_labels": np.zeros(9, dtype=int)}, "train_labels"),
        ({"train": np.zeros((10, 2)), "train_labels": np.zeros(10)}, "train_labels"),
        ({"train": np.zeros((10, 2)), "valid_labels": np.zeros(3, dtype=int)}, "no 'valid'"),
        ({"train": np.zeros(10)}, "at least 2 dimensions"),
        ({"train": np.array([["a", "b"]] * 10)}, "dtype"),
    ],
    ids=["unknown-key", "no-train", "shape-mismatch", "label-count", "float-labels", "orphan-labels", "1d", "strings"],
)
def test_bad_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "d.npz"))


def test_non_finite_values(tmp_path):
    x = np.random.default_rng(0).random((30, 4))
    x[17, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match="NaN"):
        load_dataset(str(tmp_path / "x.npy"))


def test_values_outside_unit_interval_need_binarize_none(tmp_path):
    np.save(tmp_path / "x.npy", np.linspace(-1, 2, 60).reshape(30, 2))
    assert load_dataset(str(tmp_path / "x.npy")).train.min() < 0
    for mode in ("static", "dynamic"):
        with pytest.raises(DataError, match="binarize='none'"):
            load_dataset(str(tmp_path / "x.npy"), binarize=mode)


def test_missing_and_unreadable_array_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.npy"))
    (tmp_path / "junk.npz").write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset(str(tmp_path / "junk.npz"))


# ----------------------------------------------------------------------------- digits, names, modes


def test_digits_default_split():
    ds = load_dataset("digits")
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((1257, 64), (180, 64), (360, 64))
    assert ds.image_shape == (1, 8, 8)
    assert ds.train.min() >= 0 and ds.train.max() == 1
    assert set(ds.train_labels.tolist()) == set(range(10))
    again = load_dataset("digits")
    assert all(torch.equal(ds.split(s), again.split(s)) for s in ("train", "valid", "test"))


def test_digits_seed_changes_valid_but_not_test():
    ds, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(ds.test, other.test) and torch.equal(ds.test_labels, other.test_labels)
    assert not torch.equal(ds.valid, other.valid)
    pool = torch.cat([ds.train, ds.valid])
    other_pool = torch.cat([other.train, other.valid])
    assert torch.equal(pool.sum(0), other_pool.sum(0))  # same training pool, split differently


def test_unknown_name_and_mode():
    with pytest.raises(DataError, match="digits, fashion-mnist, mnist, binarized-mnist.*npy"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="none, static, dynamic"):
        load_dataset("digits", binarize="stochastic")
    with pytest.raises(DataError, match="train, valid, test"):
        load_dataset("digits").split("validation")


def test_static_binarization_is_fixed():
    ds = load_dataset("digits", binarize="static")
    again = load_dataset("digits", binarize="static")
    for split in ("train", "valid", "test"):
        x = ds.split(split)
        assert set(x.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(x, again.split(split))
    assert torch.equal(ds.train_epoch(3, 0), ds.train)


def test_dynamic_binarization():
    grey = load_dataset("digits")
    ds = load_dataset("digits", binarize="dynamic")
    static = load_dataset("digits", binarize="static")
    assert torch.equal(ds.train, grey.train)
    assert torch.equal(ds.valid, static.valid) and torch.equal(ds.test, static.test)

    first = ds.train_epoch(0, seed=0)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(first, ds.train_epoch(0, seed=0))
    assert not torch.equal(first, ds.train_epoch(1, seed=0))
    assert not torch.equal(first, ds.train_epoch(0, seed=1))

    mean = torch.stack([ds.train_epoch(epoch, seed=0) for epoch in range(200)]).mean(0)
    # Each entry's mean has std <= 0.5 / sqrt(200) ~ 0.035; the average error is far below 0.1.
    assert (mean - ds.train).abs().mean() < 0.1


def test_documented_binarization_seeds():
    grey = load_dataset("digits")
    static = load_dataset("digits", binarize="static")
    dynamic = load_dataset("digits", binarize="dynamic")

    def bernoulli(x, seed):
        return (torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < x).float()

    base = data.STATIC_BINARIZATION_SEED
    assert torch.equal(static.train, bernoulli(grey.train, base))
    assert torch.equal(static.valid, bernoulli(grey.valid, base + 1))
    assert torch.equal(static.test, bernoulli(grey.test, base + 2))
    assert torch.equal(dynamic.train_epoch(4, 9), bernoulli(grey.train, data.epoch_seed(9, 4)))
    assert data.epoch_seed(9, 4) != data.epoch_seed(4, 9)


def test_none_mode_keeps_grey_levels():
    ds = load_dataset("digits")
    assert len(ds.train.unique()) == 17  # 0/16 .. 16/16
    assert ds.train_epoch(0, 0) is ds.train


# ----------------------------------------------------------------------------- the real data


@pytest.mark.skipif(
    not Path(data.DEBIAN_FASHION_MNIST_DIR).is_dir(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist_from_debian_package(tmp_path):
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (50000, 10000, 10000)
    assert ds.train.shape[1] == 784 and ds.image_shape == (1, 28, 28)
    assert ds.test.min() == 0 and ds.test.max() == 1
    for split in ("train", "valid", "test"):
        assert set(ds.labels(split).unique().tolist()) == set(range(10))
