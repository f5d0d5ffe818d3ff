"""Training objectives: ``pyro.infer.ELBO`` instances chosen by name.

Every objective here is a ``pyro.infer.ELBO``, so it works in a plain ``pyro.infer.SVI`` loop and in
:mod:`pyro_vae.training`, on any model/guide pair.  Its ``loss`` is minimised (lower is better) and
equals minus the bound summed over the data plate, scaled to the full data set by the plate.

=============  ============================================================================================
name           estimator of the per-datapoint bound (higher is better), with z_k ~ q(z | x)
=============  ============================================================================================
``elbo``       Trace_ELBO: (1/K) sum_k [log p(x, z_k) - log q(z_k | x)]   (Monte-Carlo KL; any prior)
``meanfield``  TraceMeanField_ELBO: E_q[log p(x | z)] - KL(q(z | x) || p(z)), with the KL in closed
               form where Pyro has one (e.g. Gaussian q and standard normal p); lower-variance gradients.
=============  ============================================================================================

K (``num_particles``) particles are vectorized in an outer plate (no Python loop over K).

Reference: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

OBJECTIVES = ("elbo", "meanfield")


def build_objective(name: str, num_particles: int = 1) -> ELBO:
    """The objective called ``name`` (one of :data:`OBJECTIVES`) with ``num_particles`` particles."""
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    vectorize = num_particles > 1
    if name == "elbo":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    if name == "meanfield":
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    raise ValueError(f"unknown loss {name!r}; choose one of {OBJECTIVES}")
