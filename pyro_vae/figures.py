"""The figures of a trained model (what :mod:`pyro_vae.run` writes into a run folder): the model is asked for
its reconstructions, samples, encoder means and prior, and the plotting modules
(:mod:`pyro_vae.plots`, :mod:`pyro_vae.image_plots`, :mod:`pyro_vae.latent_plots`) draw the arrays.

``model`` needs ``reconstruct(x)``, ``sample(n)``, ``encode(x) -> (loc, scale)``, ``decode(z)`` and a
``prior``, as :class:`pyro_vae.VAE` has; ``data`` is a :class:`pyro_vae.data.Dataset`.
"""
from pathlib import Path
from typing import Any, List, Mapping, Sequence, Tuple

import torch

from .data import evaluation_indices
from .image_plots import plot_image_grid, plot_reconstructions
from .latent_plots import plot_latent_space, plot_prior_density
from .plots import PathLike, plot_training_curves
from .priors import MixtureOfGaussiansPrior, VampPrior


def _encoder_means(model: Any, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``model.encode(x)[0]`` in batches: the means of q(z | x), ``[N, Z]``."""
    return torch.cat([model.encode(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])


MEAN_NAMES = {"bernoulli": "Bernoulli mean", "continuous-bernoulli": "continuous-Bernoulli mean",
              "gaussian": "Gaussian mean"}


def _likelihood_mean(model: Any) -> str:
    """What ``model.reconstruct`` and ``model.sample`` return, by the likelihood's name: "Bernoulli mean", ..."""
    return MEAN_NAMES.get(getattr(getattr(model, "likelihood", None), "name", None), "decoder mean")


def reconstruction_wording(model: Any, data: Any, x: torch.Tensor) -> Tuple[str, Tuple[str, str]]:
    """The title and row labels of ``reconstructions.png`` for the inputs ``x``: what the inputs are (binarized
    0/1 samples of the grey levels, binary data, or grey levels) and what the reconstructions are (the
    likelihood's means at the encoder's mean), over pairs of rows."""
    mean = _likelihood_mean(model)
    binary = bool(((x == 0) | (x == 1)).all())
    if binary and getattr(data, "binarize", "none") != "none":
        inputs, input_label = "binarized test inputs (0/1 samples of the grey levels)", "input\n(binarized)"
    elif binary:
        inputs, input_label = "binary test inputs", "input\n(0/1)"
    else:
        inputs, input_label = "test inputs", "input"
    title = (f"Pairs of rows: {inputs}\nabove their reconstructions, the {mean}s "
             f"E[x | z = mean of q(z | x)]")
    return title, (input_label, f"reconstruction\n({mean})")


def write_prior_figures(model: Any, data: Any, out_dir: PathLike) -> List[Path]:
    """Figures of a learned prior (``model.prior`` a mixture-of-Gaussians or VampPrior, see
    :mod:`pyro_vae.priors`): ``prior_components.png`` (each component's mean decoded, MoG) or
    ``pseudo_inputs.png`` (the pseudo-inputs above their reconstructions, VampPrior), and for a 2-D
    latent ``prior_density.png`` (:func:`plot_prior_density` with the test set encoded)."""
    out_dir = Path(out_dir)
    prior, written = model.prior, []
    device = next(model.parameters()).device
    with torch.no_grad():
        if data.image_shape is not None and isinstance(prior, MixtureOfGaussiansPrior):
            order = torch.argsort(prior.weights, descending=True)[:64]
            written.append(plot_image_grid(model.decode(prior.means[order]), data.image_shape,
                                           out_dir / "prior_components.png",
                                           title="Mixture components: E[x | z = mu_c], by weight"))
        if data.image_shape is not None and isinstance(prior, VampPrior):
            u = prior.inputs()[:30]
            mean = _likelihood_mean(model)
            written.append(plot_reconstructions(u, model.reconstruct(u), data.image_shape,
                                                out_dir / "pseudo_inputs.png",
                                                title=f"Pairs of rows: VampPrior pseudo-inputs\nabove their "
                                                      f"reconstructions ({mean}s)",
                                                labels=("pseudo-input", f"reconstruction\n({mean})")))
        if model.latent_dim == 2:
            loc = _encoder_means(model, data.test.to(device))
            written.append(plot_prior_density(lambda g: prior().log_prob(g.to(device)).cpu(), loc.cpu(),
                                              data.test_labels, out_dir / "prior_density.png"))
    return written


def write_run_figures(model: Any, data: Any, history: Sequence[Mapping[str, Any]], out_dir: PathLike,
                      num_images: int = 30, seed: int = 0) -> List[Path]:
    """The figures of a training run, written to ``out_dir``:

    ``curves.png`` (training objective and validation bound per epoch), ``reconstructions.png`` (test inputs
    above their reconstructions, worded by :func:`reconstruction_wording`), ``samples.png`` (decoded draws from the
    prior) and
    ``latent.png`` (test-set encoder means coloured by label; PCA when Z > 2), plus
    :func:`write_prior_figures`.

    ``model`` needs ``reconstruct(x)``, ``sample(n)`` and ``encode(x) -> (loc, scale)``, as
    :class:`pyro_vae.VAE` has; ``data`` is a :class:`pyro_vae.data.Dataset`.  Image figures are
    skipped for data without an image shape.
    """
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    test = data.test.to(device)
    written = [plot_training_curves(history, out_dir / "curves.png")]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if data.image_shape is not None:
            x = test[evaluation_indices(len(test), num_images).to(device)]   # spread: a split may be sorted
            title, labels = reconstruction_wording(model, data, x)
            written.append(plot_reconstructions(x, model.reconstruct(x), data.image_shape,
                                                out_dir / "reconstructions.png", title=title, labels=labels))
            written.append(plot_image_grid(model.sample(64), data.image_shape, out_dir / "samples.png",
                                           title=f"Samples: {_likelihood_mean(model)}s E[x | z], z ~ p(z)"))
        loc = _encoder_means(model, test)
        written.append(plot_latent_space(loc, data.test_labels, out_dir / "latent.png",
                                         title="Test set: encoder means"))
        written += write_prior_figures(model, data, out_dir)
    return written
