"""A VAE with two stochastic layers, the IWAE paper's second architecture (Burda et al. 2016, sec. 5):

    p(z2) p(z1 | z2) p(x | z1)      784 -(200, 200)- 100 -(100, 100)- 50
    q(z1 | x) q(z2 | z1)

with diagonal-Gaussian conditionals, tanh hidden layers and a Bernoulli likelihood.  The guide samples z1
then z2 given z1, so every objective of ``pyro_vae.objectives`` (IWAE included) weights the joint sample
(z1, z2): ``log w = log p(z2) + log p(z1|z2) + log p(x|z1) - log q(z1|x) - log q(z2|z1)``.

Declared only on the contract: ``model(x, num_data)`` / ``guide(x, num_data)`` with both latents and the
observation inside ``pyro.plate("data", ...)``.  From the command line (the defaults are the paper's
architecture; ``--hidden``, ``--latent-dim`` and ``--activation`` change the lower MLPs, the top layer z2
and the nonlinearity, ``--model-arg latent1_dim=... --model-arg 'hidden2=[...]'`` the middle)::

    pyro-vae train --model pyro_vae.examples.two_layer:TwoLayerVAE --loss iwae --num-particles 5
"""
from typing import Optional, Sequence

import pyro
import torch
from torch import nn

from ..distributions import BernoulliVector, DiagonalNormal, StandardNormal
from ..networks import MLPDecoder, MLPEncoder
from ..plates import data_plate


class TwoLayerVAE(nn.Module):
    """Two stochastic layers z2 -> z1 -> x.

    Args:
        data_dim: D.
        latent_dim: size of the top layer z2 (50 in the paper).
        hidden: hidden layers between x and z1, both ways ((200, 200) in the paper).
        latent1_dim: size of the middle layer z1 (100).
        hidden2: hidden layers between z1 and z2, both ways ((100, 100)).
        activation: hidden nonlinearity (tanh in the paper).

    Shapes: ``x: [B, D]``, ``z1: [B, latent1_dim]``, ``z2: [B, latent_dim]`` (with a leading particle
    dimension ``[K, B, ...]`` under vectorized objectives).
    """

    def __init__(self, data_dim: int, latent_dim: int = 50, hidden: Sequence[int] = (200, 200),
                 latent1_dim: int = 100, hidden2: Sequence[int] = (100, 100), activation: str = "tanh"):
        super().__init__()
        self.data_dim, self.latent_dim, self.latent1_dim = data_dim, latent_dim, latent1_dim
        self.q_z1 = MLPEncoder(data_dim, latent1_dim, hidden, activation)        # x -> (loc, scale) of z1
        self.q_z2 = MLPEncoder(latent1_dim, latent_dim, hidden2, activation)     # z1 -> (loc, scale) of z2
        self.p_z1 = MLPEncoder(latent_dim, latent1_dim, hidden2, activation)     # z2 -> (loc, scale) of z1
        self.p_x = MLPDecoder(latent1_dim, data_dim, tuple(reversed(hidden)), activation)  # z1 -> logits
        # p(z2) = N(0, I): buffers follow the module's device and dtype
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(latent_dim), persistent=False)

    def _plate(self, x: torch.Tensor, num_data: Optional[int]):
        return data_plate(x, num_data)

    def model(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        with self._plate(x, num_data):
            z2 = pyro.sample("z2", StandardNormal(self.prior_loc, self.prior_scale))
            z1 = pyro.sample("z1", DiagonalNormal(*self.p_z1(z2)))
            pyro.sample("x", BernoulliVector(logits=self.p_x(z1)), obs=x)

    def guide(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        with self._plate(x, num_data):
            z1 = pyro.sample("z1", DiagonalNormal(*self.q_z1(x)))
            pyro.sample("z2", DiagonalNormal(*self.q_z2(z1)))

    # -- what the CLI's sample / reconstruct use ---------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape [N, {self.data_dim}], got {tuple(x.shape)}")
        if ((x != 0) & (x != 1)).any():
            raise ValueError("TwoLayerVAE has a Bernoulli likelihood: x must be binary (binarize='dynamic', --binarize dynamic)")

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """E[x | z1] for z2 ~ p(z2), z1 ~ p(z1 | z2): ``[num_samples, D]``."""
        p = next(self.parameters())
        z2 = torch.randn(num_samples, self.latent_dim, device=p.device, dtype=p.dtype)
        z1 = DiagonalNormal(*self.p_z1(z2)).sample()
        return torch.sigmoid(self.p_x(z1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z1 = mean of q(z1 | x)]: ``[B, D]``."""
        return torch.sigmoid(self.p_x(self.q_z1(x)[0]))
