"""Encoder and decoder networks (plain PyTorch, no Pyro).

Shape legend: ``...`` any leading batch dims (e.g. ``N`` data, or ``K, N`` particles x data),
``D`` data dimension (flattened), ``Z`` latent dimension, ``(C, H, W)`` image shape.

* An **encoder** maps ``x: [..., D]`` to the parameters of a diagonal Gaussian
  q(z | x) = N(mu(x), diag sigma(x)^2): ``(loc [..., Z], scale [..., Z])`` with ``scale > 0``.
* A **decoder** maps ``z: [..., Z]`` to one real number per data dimension, ``[..., D]``, which a
  likelihood (:mod:`pyro_vae.likelihoods`) reads as logits or means.

Data is always passed flattened as ``[..., D]``; the convolutional networks reshape to images
internally, so models, objectives and evaluators never see image dims.
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import chw
from .specs import Recorded

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus}
NETWORKS = ("mlp", "conv")

# The encoder's scale is softplus(raw) + MIN_SCALE: positive, smooth, and never exactly 0, so
# log q(z | x) stays finite even when the encoder is very confident.
MIN_SCALE = 1e-4


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


def _gaussian_params(h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split ``[..., 2Z]`` into ``loc [..., Z]`` and a positive ``scale [..., Z]``."""
    loc, raw_scale = h.chunk(2, dim=-1)
    return loc, F.softplus(raw_scale) + MIN_SCALE


def _check_last_dim(t: torch.Tensor, size: int, what: str) -> None:
    if t.dim() < 1 or t.shape[-1] != size:
        raise ValueError(f"{what} must have shape [..., {size}], got {tuple(t.shape)}")


class MLPEncoder(Recorded, nn.Module):
    """``x [..., D] -> (loc [..., Z], scale [..., Z])`` through hidden layers ``hidden``."""

    def __init__(self, data_dim: int, latent_dim: int, hidden: Sequence[int] = (400,), activation: str = "relu"):
        super().__init__()
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.net = mlp([data_dim, *hidden, 2 * latent_dim], activation)

    def forward(self, x):
        _check_last_dim(x, self.data_dim, "encoder input x")
        return _gaussian_params(self.net(x))


class MLPDecoder(Recorded, nn.Module):
    """``z [..., Z] -> [..., D]`` through hidden layers ``hidden`` (listed from z outwards)."""

    def __init__(self, latent_dim: int, data_dim: int, hidden: Sequence[int] = (400,), activation: str = "relu"):
        super().__init__()
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.net = mlp([latent_dim, *hidden, data_dim], activation)

    def forward(self, z):
        _check_last_dim(z, self.latent_dim, "decoder input z")
        return self.net(z)


def _conv_out(n: int) -> int:
    """Spatial size after a 3x3 convolution with stride 2 and padding 1."""
    return (n - 1) // 2 + 1


class ConvEncoder(Recorded, nn.Module):
    """Convolutional encoder for images flattened to ``[..., C*H*W]``.

    Each entry of ``channels`` is a 3x3 convolution with stride 2 (halving H and W), followed by
    a linear layer to ``2Z`` outputs.  ``(1, 28, 28)`` with channels (32, 64) goes 28 -> 14 -> 7.
    """

    def __init__(self, image_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64),
                 activation: str = "relu"):
        super().__init__()
        self.image_shape = chw(image_shape)
        c, h, w = self.image_shape
        self.data_dim, self.latent_dim = c * h * w, latent_dim
        layers = []
        for c_out in channels:
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), _activation(activation)]
            c, h, w = c_out, _conv_out(h), _conv_out(w)
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c * h * w, 2 * latent_dim)

    def forward(self, x):
        _check_last_dim(x, self.data_dim, "encoder input x")
        batch = x.shape[:-1]
        h = self.conv(x.reshape(-1, *self.image_shape))        # [prod(...), C'*H'*W']
        loc, scale = _gaussian_params(self.head(h))            # [prod(...), Z] each
        return loc.reshape(*batch, -1), scale.reshape(*batch, -1)


class ConvDecoder(Recorded, nn.Module):
    """Mirror of :class:`ConvEncoder`: ``z [..., Z] -> [..., C*H*W]``.

    A linear layer to the encoder's smallest feature map, then 3x3 transposed convolutions with
    stride 2 whose output padding is chosen so the sizes retrace the encoder's exactly (odd sizes
    such as 7 included), the last one producing C channels.
    """

    def __init__(self, latent_dim: int, image_shape: Sequence[int], channels: Sequence[int] = (32, 64),
                 activation: str = "relu"):
        super().__init__()
        self.image_shape = chw(image_shape)
        c, h, w = self.image_shape
        self.data_dim, self.latent_dim = c * h * w, latent_dim
        sizes = [(h, w)]
        for _ in channels:
            sizes.append((_conv_out(sizes[-1][0]), _conv_out(sizes[-1][1])))
        self.first_shape = (channels[-1],) + sizes[-1]
        self.fc = nn.Sequential(nn.Linear(latent_dim, channels[-1] * sizes[-1][0] * sizes[-1][1]),
                                _activation(activation))
        layers = []
        outs = list(reversed(channels[:-1])) + [c]
        c_in = channels[-1]
        for i, c_out in enumerate(outs):
            (h_in, w_in), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            padding = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=padding))
            if i < len(outs) - 1:
                layers.append(_activation(activation))
            c_in = c_out
        self.deconv = nn.Sequential(*layers)

    def forward(self, z):
        _check_last_dim(z, self.latent_dim, "decoder input z")
        batch = z.shape[:-1]
        h = self.fc(z.reshape(-1, self.latent_dim)).reshape(-1, *self.first_shape)
        return self.deconv(h).reshape(*batch, self.data_dim)   # [..., C*H*W]
