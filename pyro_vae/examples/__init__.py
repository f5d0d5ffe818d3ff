"""Worked examples of models declared on the library's contract (``pyro_vae.contract``,
``docs/declaring_models.md``): nothing here is special-cased anywhere else in pyro_vae.

* :class:`~pyro_vae.examples.two_layer.TwoLayerVAE`: two stochastic layers z2 -> z1 -> x (IWAE paper).
* :class:`~pyro_vae.examples.conditional.ConditionalVAE`: p(x | z, y) with class labels y.

Train either from the command line, e.g. ``pyro-vae train --model pyro_vae.examples.two_layer:TwoLayerVAE``.
"""
from .conditional import ConditionalVAE
from .two_layer import TwoLayerVAE

__all__ = ["ConditionalVAE", "TwoLayerVAE"]
