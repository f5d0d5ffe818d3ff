"""Tests for pyro_vae.plots: files are written and readable, shapes/aspects sane, PCA correct."""

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from pyro_vae import image_plots, latent_plots, plots


def _read_png(path):
    assert path.exists(), path
    assert path.stat().st_size > 0
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 10 and img.shape[1] > 10
    return img


def _aspect(img):
    """width / height of a read-back PNG."""
    return img.shape[1] / img.shape[0]


def _history(n=12, nan_at=()):
    hist = []
    for e in range(1, n + 1):
        v = -150.0 + 40.0 * (1 - math.exp(-e / 3))
        hist.append({"epoch": e, "train_loss": -v - 1.0, "val_elbo": v,
                     "beta": min(1.0, e / 5), "lr": 1e-3})
    for i in nan_at:
        hist[i]["val_elbo"] = float("nan")
        hist[i]["train_loss"] = float("inf")
    return hist


# --------------------------------------------------------------------------- training curves
def test_training_curves_writes_png(tmp_path):
    out = plots.plot_training_curves(_history(), tmp_path / "sub" / "curves.png")
    assert out == tmp_path / "sub" / "curves.png"
    img = _read_png(out)
    assert 1.2 < _aspect(img) < 2.2  # landscape


def test_training_curves_with_nan_and_missing_entries(tmp_path):
    hist = _history(10, nan_at=(2, 7))
    del hist[4]["val_elbo"]
    hist[5]["beta"] = None
    hist.append({"epoch": 11})  # nothing to plot in this entry
    out = plots.plot_training_curves(hist, tmp_path / "nan.png", title="with gaps")
    _read_png(out)


def test_training_curves_single_epoch(tmp_path):
    out = plots.plot_training_curves(
        [{"epoch": 1, "train_loss": 120.0, "val_elbo": -118.0}], str(tmp_path / "one.png")
    )
    _read_png(out)


def test_training_curves_all_nonfinite_and_tensor_values(tmp_path):
    _read_png(plots.plot_training_curves(
        [{"epoch": 1, "train_loss": float("nan"), "val_elbo": float("nan")}],
        tmp_path / "allnan.png"))
    hist = [{"epoch": torch.tensor(e), "train_loss": torch.tensor(100.0 - e),
             "val_elbo": np.float32(-101.0 + e)} for e in range(1, 4)]
    _read_png(plots.plot_training_curves(hist, tmp_path / "tensors.png"))


def test_training_curves_keep_the_legend_and_notes_off_the_data():
    """The best value, the legend and the clipped-axis note sit in a band below the axes (issue 15: they covered
    the curves)."""
    hist = _history(30)
    hist[0]["val_elbo"] = -900.0                                    # a far-off first epoch: the y-axis is clipped
    fig = plots.training_curves_figure(hist)
    fig.canvas.draw()                                               # lays the figure out as saving does
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    plot_area = ax.get_window_extent(renderer)
    labels = [t.get_text() for t in fig.texts]
    assert any("y-axis clipped" in text and "-900.00" in text for text in labels), labels
    assert fig.legends and not ax.get_legend() and not ax.texts     # nothing written inside the axes
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(text.startswith("best validation ELBO: ") and "at epoch 30" in text for text in legend_labels)
    for artist in fig.legends + fig.texts:
        box = artist.get_window_extent(renderer)
        assert box.y1 <= plot_area.y0 and not box.overlaps(plot_area), artist
    for artist in ax.get_xticklabels() + [ax.xaxis.label]:          # and below the x-axis labels too
        assert fig.legends[0].get_window_extent(renderer).y1 <= artist.get_window_extent(renderer).y0


# --------------------------------------------------------------------------- image grids
def test_image_grid_16_is_roughly_square(tmp_path):
    imgs = torch.rand(16, 28 * 28)
    out = image_plots.plot_image_grid(imgs, (1, 28, 28), tmp_path / "grid.png")
    img = _read_png(out)
    assert 0.9 < _aspect(img) < 1.1


def test_image_grid_ncols_controls_aspect_and_rgb(tmp_path):
    imgs = np.random.default_rng(0).uniform(-0.5, 1.5, size=(8, 3 * 10 * 10))  # out of range: clipped
    out = image_plots.plot_image_grid(imgs, (3, 10, 10), tmp_path / "row.png", ncols=8)
    img = _read_png(out)
    assert 6.0 < _aspect(img) < 9.0  # one row of 8 tiles
    out = image_plots.plot_image_grid(imgs[:6, :240], (8, 30), tmp_path / "hw.png", title="a title", ncols=2)
    _read_png(out)


def test_image_grid_pixels_match_data(tmp_path):
    # a single all-white and a single all-black image: the rendered grid must contain both
    imgs = np.stack([np.ones(64), np.zeros(64)])
    img = _read_png(image_plots.plot_image_grid(imgs, (8, 8), tmp_path / "bw.png", ncols=2))
    grey = img[..., :3].mean(axis=-1)
    h, w = grey.shape
    left = grey[h // 4 : 3 * h // 4, w // 8 : 3 * w // 8]
    right = grey[h // 4 : 3 * h // 4, 5 * w // 8 : 7 * w // 8]
    assert left.mean() > 0.95 and right.mean() < 0.05


def test_image_grid_shape_mismatch_raises(tmp_path):
    with pytest.raises(ValueError, match=r"D=50.*\(1, 7, 7\).*49"):
        image_plots.plot_image_grid(np.zeros((4, 50)), (1, 7, 7), tmp_path / "x.png")
    with pytest.raises(ValueError):
        image_plots.plot_image_grid(np.zeros((4, 2 * 4 * 4)), (2, 4, 4), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- reconstructions
def test_reconstructions_layout(tmp_path):
    x = torch.rand(10, 64)
    img = _read_png(image_plots.plot_reconstructions(x, x.flip(0), (1, 8, 8), tmp_path / "r10.png"))
    # 10 per row, 2 rows (+ label margin and title): clearly landscape
    assert 3.0 < _aspect(img) < 6.5
    img2 = _read_png(image_plots.plot_reconstructions(torch.rand(25, 64), torch.rand(25, 64),
                                                (8, 8), tmp_path / "r25.png"))
    # 25 -> 3 row pairs: taller than the 10-image figure at similar width
    assert _aspect(img2) < _aspect(img) / 2


def test_reconstructions_are_worded_by_the_layout_and_the_likelihood():
    """Pairs of rows, not "top/bottom"; binarized inputs and Bernoulli (or Gaussian) means named as such."""
    from types import SimpleNamespace
    from pyro_vae.figures import reconstruction_wording
    from pyro_vae.likelihoods import BernoulliLikelihood, GaussianLikelihood
    binary = torch.bernoulli(torch.full((30, 64), 0.5))
    title, labels = reconstruction_wording(SimpleNamespace(likelihood=BernoulliLikelihood()),
                                           SimpleNamespace(binarize="dynamic"), binary)
    assert title.startswith("Pairs of rows: binarized test inputs (0/1 samples")
    assert "above their reconstructions, the Bernoulli means" in title and "top" not in title
    assert labels == ("input\n(binarized)", "reconstruction\n(Bernoulli mean)")
    title, labels = reconstruction_wording(SimpleNamespace(likelihood=GaussianLikelihood(64)),
                                           SimpleNamespace(binarize="none"), torch.rand(30, 64))
    assert "test inputs\nabove their reconstructions, the Gaussian means" in title and labels[0] == "input"
    assert "top" not in image_plots.plot_reconstructions.__defaults__[0]
    _read_png(image_plots.plot_reconstructions(binary, binary, (8, 8), Path(tempfile.mkdtemp()) / "r.png",
                                               title=title, labels=("a much longer input label", "b")))


def test_run_figures_reconstruct_points_spread_over_a_sorted_test_split(tmp_path, monkeypatch):
    """A test split sorted by class (Larochelle's binarized MNIST: its first 1000 rows are zeros) must not give a
    reconstruction figure of one class: the figure's inputs are every (N / n)-th row."""
    from pyro_vae import figures
    from pyro_vae.data import load_dataset
    from pyro_vae.vae import build_vae
    data = load_dataset("digits", None, "static", None, 0)
    order = torch.argsort(data.test_labels, stable=True)
    data.test, data.test_labels = data.test[order], data.test_labels[order]
    shown = {}
    monkeypatch.setattr(figures, "plot_reconstructions", lambda x, *a, **k: shown.setdefault("x", x))
    figures.write_run_figures(build_vae(64, latent_dim=2, hidden=(8,)), data, [], tmp_path, num_images=10)
    rows = torch.arange(10) * len(data.test) // 10
    assert torch.equal(shown["x"], data.test[rows])
    assert data.test_labels[:10].unique().tolist() == [0] and len(data.test_labels[rows].unique()) >= 9


def test_reconstructions_mismatch_raises(tmp_path):
    with pytest.raises(ValueError, match=r"\(5, 64\).*\(4, 64\)"):
        image_plots.plot_reconstructions(np.zeros((5, 64)), np.zeros((4, 64)), (8, 8), tmp_path / "r.png")
    with pytest.raises(ValueError, match="prod"):
        image_plots.plot_reconstructions(np.zeros((5, 60)), np.zeros((5, 60)), (8, 8), tmp_path / "r.png")


# --------------------------------------------------------------------------- PCA
def test_pca_recovers_dominant_direction():
    rng = np.random.default_rng(1)
    d = rng.normal(size=6)
    d /= np.linalg.norm(d)
    t = rng.normal(scale=10.0, size=500)
    z = t[:, None] * d[None, :] + rng.normal(scale=0.5, size=(500, 6)) + 3.0
    proj, ratio = latent_plots.pca_2d(torch.as_tensor(z))
    assert proj.shape == (500, 2) and ratio.shape == (2,)
    # the PC1 scores are the coordinate along d (up to sign)
    t_c = t - t.mean()
    cos = abs(np.dot(proj[:, 0], t_c)) / (np.linalg.norm(proj[:, 0]) * np.linalg.norm(t_c))
    assert cos > 0.99
    # and the implied direction matches d
    zc = z - z.mean(0)
    direction = np.linalg.lstsq(zc, proj[:, 0], rcond=None)[0]
    assert abs(direction @ d) / np.linalg.norm(direction) > 0.99
    assert ratio[0] >= ratio[1] >= 0
    assert ratio.sum() <= 1.0 + 1e-12
    assert ratio[0] > 0.9


def test_pca_on_2d_data_explains_everything():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(50, 2)) * np.array([3.0, 1.0])
    proj, ratio = latent_plots.pca_2d(z)
    assert ratio.sum() == pytest.approx(1.0)
    assert ratio[0] >= ratio[1]
    # a rotation: distances to the centroid are preserved
    zc = z - z.mean(0)
    np.testing.assert_allclose(np.linalg.norm(proj, axis=1), np.linalg.norm(zc, axis=1), rtol=1e-10)


def test_pca_errors_and_degenerate_inputs():
    with pytest.raises(ValueError):
        latent_plots.pca_2d(np.zeros((1, 5)))
    with pytest.raises(ValueError):
        latent_plots.pca_2d(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))
    proj, ratio = latent_plots.pca_2d(np.zeros((4, 3)))  # no variance at all
    assert np.all(proj == 0) and np.all(ratio == 0)
    proj, ratio = latent_plots.pca_2d(np.arange(5.0)[:, None])  # Z == 1
    assert proj.shape == (5, 2) and ratio.tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- latent space
@pytest.mark.parametrize("zdim", [1, 2, 5])
@pytest.mark.parametrize("n_classes", [None, 3, 15, 30])
def test_latent_space_all_cases(tmp_path, zdim, n_classes):
    rng = np.random.default_rng(zdim)
    z = rng.normal(size=(200, zdim))
    labels = None if n_classes is None else torch.as_tensor(rng.integers(0, n_classes, 200))
    out = latent_plots.plot_latent_space(torch.as_tensor(z), labels, tmp_path / f"lat_{zdim}_{n_classes}.png")
    img = _read_png(out)
    assert 0.8 < _aspect(img) < 2.0


def test_latent_space_label_length_mismatch(tmp_path):
    with pytest.raises(ValueError):
        latent_plots.plot_latent_space(np.zeros((10, 2)), np.zeros(9, dtype=int), tmp_path / "l.png")


def test_latent_space_drops_nonfinite_with_warning(tmp_path):
    z = np.random.default_rng(0).normal(size=(20, 3))
    z[3, 1] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        out = latent_plots.plot_latent_space(z, np.arange(20) % 2, tmp_path / "l.png", title="t")
    _read_png(out)
