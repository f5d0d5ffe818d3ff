"""The variational autoencoder as a pair of Pyro programs.

Generative model (``VAE.model``), for each data point n in the plate ``"data"``::

    z_n ~ p(z)                          (a Prior)
    x_n ~ p(x | z_n) = L(decoder(z_n))  (a Likelihood)

Amortized guide (``VAE.guide``)::

    z_n ~ q(z | x_n) = N(mu(x_n), diag sigma(x_n)^2)   (an encoder)

Both are plain Pyro programs, so ``pyro.infer.SVI(vae.model, vae.guide, optim, Trace_ELBO())`` trains
the model, and every objective and evaluator of this library that takes a model/guide pair works on
them.  The encoder, decoder, prior and likelihood are separate modules passed to the constructor.

Minibatches: call ``model(x_batch, num_data=N)`` with the size N of the full data set; the data plate
then scales every per-datapoint log-density by N / B, so the loss of a minibatch of B points is an
unbiased estimate of the full-data loss (what ``pyro.plate(size=N, subsample=...)`` does).

Shape legend: ``N`` data points in the batch, ``D`` data dimension, ``Z`` latent dimension.
``x: [N, D]``, ``z: [N, Z]`` (or ``[K, N, Z]`` under an outer particle plate).
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import pyro

from .distributions import DiagonalNormal
from .likelihoods import Likelihood, build_likelihood
from .networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, NETWORKS
from .plates import data_plate
from .priors import Prior, StandardNormalPrior, build_prior
from .specs import Recorded


def _dimension(name: str, given: Optional[int], *parts) -> int:
    """A size the parts must agree on: the explicit argument, else the parts' attributes of that name."""
    found = {type(p).__name__: int(getattr(p, name)) for p in parts if p is not None and hasattr(p, name)}
    if given is None and not found:
        raise ValueError(f"cannot tell the VAE's {name}: pass {name}=... (or give the decoder a "
                         f"{name!r} attribute, as pyro_vae's networks have)")
    value = int(given) if given is not None else next(iter(found.values()))
    mismatched = {k: v for k, v in found.items() if v != value}
    if mismatched:
        raise ValueError(f"{name} mismatch: the VAE uses {value}, but {mismatched}")
    return value


class VAE(Recorded, nn.Module):
    """A VAE whose parts can be swapped.

    Args:
        encoder: ``x [..., D] -> (loc [..., Z], scale [..., Z])``.
        decoder: ``z [..., Z] -> [..., D]`` (read by the likelihood as logits or means).
        likelihood: p(x | z), a :class:`~pyro_vae.likelihoods.Likelihood`.
        prior: p(z), a :class:`~pyro_vae.priors.Prior` (default: standard normal).
        name: prefix of the parameters in Pyro's param store.
        data_plate: name of the plate holding the per-datapoint sites.
        latent_dim, data_dim: Z and D; needed only when the networks have no ``latent_dim``/``data_dim``
            attributes (any ``nn.Module`` with the right input/output shapes works).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood,
                 prior: Optional[Prior] = None, name: str = "vae", data_plate: str = "data",
                 latent_dim: Optional[int] = None, data_dim: Optional[int] = None):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.latent_dim = _dimension("latent_dim", latent_dim, decoder, encoder, prior)
        self.data_dim = _dimension("data_dim", data_dim, decoder, encoder)
        self.prior = prior if prior is not None else StandardNormalPrior(self.latent_dim)
        p_z = self.prior()
        if tuple(p_z.batch_shape) != () or tuple(p_z.event_shape) != (self.latent_dim,):
            raise ValueError(f"the prior must return a distribution with batch_shape () and event_shape "
                             f"({self.latent_dim},) (use .to_event(1)); got batch_shape {tuple(p_z.batch_shape)}, "
                             f"event_shape {tuple(p_z.event_shape)}")
        self.name, self.data_plate = name, data_plate
        # Checking x against the likelihood's support costs one pass over the batch; the trainer
        # validates whole splits once up front and switches this off.
        self.validate_inputs = True
        # pyro.module(...) puts the parameters in Pyro's param store, where pyro.optim optimisers
        # (plain SVI) find them.  It costs ~0.4 ms per call, so a trainer that owns a torch optimiser
        # over self.parameters() switches it off.
        self.register_params = True

    # -- Pyro programs ------------------------------------------------------------------------

    def _plate(self, x: torch.Tensor, num_data: Optional[int]):
        if self.validate_inputs:
            self.check_input(x)
        return data_plate(x, num_data, self.data_plate)   # the batch is the subsample: log-densities scaled by N/B

    def model(self, x: torch.Tensor, num_data: Optional[int] = None) -> torch.Tensor:
        """p(x, z) = p(z) p(x | z) for a batch ``x: [N, D]``; ``num_data`` is the full data-set size."""
        if self.register_params:
            pyro.module(self.name, self)
        with self._plate(x, num_data):
            z = pyro.sample("z", self.prior())                       # [N, Z] (or [K, N, Z])
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)  # event [D]
        return z

    def guide(self, x: torch.Tensor, num_data: Optional[int] = None) -> torch.Tensor:
        """q(z | x) = N(mu(x), diag sigma(x)^2) for a batch ``x: [N, D]``."""
        if self.register_params:
            pyro.module(self.name, self)
        with self._plate(x, num_data):
            loc, scale = self.encoder(x)                             # [N, Z] each
            return pyro.sample("z", DiagonalNormal(loc, scale, validate_args=False))

    # -- plain tensor helpers (no Pyro) ------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[N, D]`` data this model's likelihood can score."""
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a torch.Tensor of shape [N, {self.data_dim}], got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape [N, {self.data_dim}] (flattened data), got {tuple(x.shape)}")
        self.likelihood.validate(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor):
        """Mean and scale of q(z | x): ``x [N, D] -> (loc [N, Z], scale [N, Z])``."""
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z]: ``z [..., Z] -> [..., D]``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = mu(x)], the decoded posterior mean: ``x [N, D] -> [N, D]``."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Means E[x | z] of ``num_samples`` draws z ~ p(z): ``[num_samples, D]``."""
        return self.decode(self.prior.sample(num_samples))


def build_vae(data_dim: int, latent_dim: int = 10, hidden: Sequence[int] = (400,), network: str = "mlp",
              image_shape: Optional[Sequence[int]] = None, activation: str = "relu",
              likelihood: str = "bernoulli", sigma: float = 0.1, learn_sigma: str = "fixed",
              prior: str = "standard", channels: Sequence[int] = (32, 64), prior_components: int = 10) -> VAE:
    """A VAE from plain settings (what the CLI and the checkpoint loader use).

    ``network="mlp"`` uses ``hidden`` for the encoder and, mirrored, for the decoder;
    ``network="conv"`` needs ``image_shape`` and uses ``channels``.
    """
    if network == "mlp":
        encoder = MLPEncoder(data_dim, latent_dim, hidden, activation)
        decoder = MLPDecoder(latent_dim, data_dim, tuple(reversed(hidden)), activation)
    elif network == "conv":
        if image_shape is None:
            raise ValueError("network='conv' needs image data (a data set with an image shape)")
        encoder = ConvEncoder(image_shape, latent_dim, channels, activation)
        decoder = ConvDecoder(latent_dim, image_shape, channels, activation)
        if encoder.data_dim != data_dim:
            raise ValueError(f"image_shape {tuple(image_shape)} does not match data_dim {data_dim}")
    else:
        raise ValueError(f"unknown network {network!r}; choose one of {NETWORKS}")
    return VAE(encoder, decoder, build_likelihood(likelihood, data_dim, sigma, learn_sigma),
               build_prior(prior, latent_dim, prior_components, encoder=encoder, data_dim=data_dim))
