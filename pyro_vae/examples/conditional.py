"""A conditional VAE p(x | z, y) with class labels y (Sohn et al. 2015; Kingma et al. 2014's M2 with y
observed):

    p(z) = N(0, I),   p(x | z, y) = Bernoulli(f([z, onehot(y)])),   q(z | x, y) = N(mu, sigma^2)([x, onehot(y)])

Declared only on the contract: the programs take the labels as ``y`` (``[B]`` integers), which the
trainer and evaluators pass, sliced with ``x``, to any model whose ``model`` names a ``y`` parameter.
Draw a chosen class from the command line::

    pyro-vae train --model pyro_vae.examples.conditional:ConditionalVAE --out runs/cvae
    pyro-vae sample runs/cvae --label 3 --out threes
"""
from typing import Optional, Sequence

import pyro
import torch
from torch import nn

from ..distributions import BernoulliVector, DiagonalNormal, StandardNormal
from ..networks import MLPDecoder, MLPEncoder
from ..plates import data_plate


class ConditionalVAE(nn.Module):
    """p(x | z, y) p(z) with guide q(z | x, y).

    Args:
        data_dim: D.
        num_classes: C (labels are 0 .. C-1).
        latent_dim: Z.
        hidden: hidden layers of the encoder (and, mirrored, the decoder).
        activation: hidden nonlinearity.

    Shapes: ``x: [B, D]``, ``y: [B]`` int64, ``z: [B, Z]`` (``[K, B, Z]`` under vectorized particles).
    """

    def __init__(self, data_dim: int, num_classes: int, latent_dim: int = 8, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu"):
        super().__init__()
        self.data_dim, self.num_classes, self.latent_dim = data_dim, num_classes, latent_dim
        self.encoder = MLPEncoder(data_dim + num_classes, latent_dim, hidden, activation)
        self.decoder = MLPDecoder(latent_dim + num_classes, data_dim, tuple(reversed(hidden)), activation)
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(latent_dim), persistent=False)

    def check_labels(self, y: torch.Tensor) -> None:
        """Labels given by a user (``sample``, ``reconstruct``) must be ``[B]`` integers in ``0..C-1``; the
        training loop's come from the data set, so the programs check only their shape (a check of the values in
        every step would read them in Python, which a compiled step cannot record)."""
        if y.dim() != 1 or (y < 0).any() or (y >= self.num_classes).any():
            raise ValueError(f"y must be [B] labels in 0..{self.num_classes - 1}, got shape {tuple(y.shape)} "
                             f"with values {y.min().item()}..{y.max().item()}")

    def _onehot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``y: [B]`` -> one-hot ``[..., B, C]`` broadcast to ``like``'s leading dimensions."""
        if y.dim() != 1:
            raise ValueError(f"y must be [B] labels, got shape {tuple(y.shape)}")
        classes = torch.arange(self.num_classes, device=y.device)
        onehot = (y.long().unsqueeze(-1) == classes).to(like.dtype)                       # [B, C]
        return onehot.expand(like.shape[:-1] + (self.num_classes,))

    def _decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, self._onehot(y, z)], -1))

    def model(self, x: torch.Tensor, y: torch.Tensor, num_data: Optional[int] = None) -> None:
        with data_plate(x, num_data):
            z = pyro.sample("z", StandardNormal(self.prior_loc, self.prior_scale))
            pyro.sample("x", BernoulliVector(logits=self._decode(z, y)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor, num_data: Optional[int] = None) -> None:
        with data_plate(x, num_data):
            pyro.sample("z", DiagonalNormal(*self.encoder(torch.cat([x, self._onehot(y, x)], -1))))

    @torch.no_grad()
    def sample(self, num_samples: int, y: torch.Tensor) -> torch.Tensor:
        """E[x | z, y] for z ~ p(z) and the given labels ``y: [num_samples]``: ``[num_samples, D]``."""
        self.check_labels(y)
        z = torch.randn(num_samples, self.latent_dim, device=self.prior_loc.device, dtype=self.prior_loc.dtype)
        return torch.sigmoid(self._decode(z, y.to(z.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | z = mean of q(z | x, y), y]: ``[B, D]``."""
        self.check_labels(y)
        loc, _ = self.encoder(torch.cat([x, self._onehot(y, x)], -1))
        return torch.sigmoid(self._decode(loc, y))
