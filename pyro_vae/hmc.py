"""One Hamiltonian Monte Carlo transition for a batch of independent chains, vectorized: no Python loop over
chains or data points, one fused gradient of the log-density per leapfrog step for all of them.

For a target density f(u) on R^P (known up to a constant) and each chain independently::

    r ~ N(0, I)                                           momentum
    (u', r') = leapfrog^L(u, r; eps)                       L steps of size eps along grad log f
    accept with probability min(1, exp(H(u, r) - H(u', r'))),   H(u, r) = -log f(u) + |r|^2 / 2

which leaves f invariant for any fixed step size eps and number of steps L (Neal 2011, "MCMC using
Hamiltonian dynamics", Sec. 5.2-5.3).  A proposal whose energy is not finite (the integrator diverged) is
rejected.  The step size may differ between groups of chains (one per data point in AIS): ``step_size``
broadcasts against the chains' batch shape.

Shape legend: ``C`` chains, ``B`` data points (any batch shape ``[...]`` works), ``P`` the flattened
unconstrained dimension.  Positions ``u: [..., P]``, log-densities ``[...]``.

:mod:`pyro_vae.ais` uses it for the HMC transitions of annealed importance sampling (Neal 2001; Wu et al.
2017, Sec. 4), where the step size is adapted per data point toward a target acceptance rate.
"""
import dataclasses
from typing import Callable, Dict, Tuple

import torch

#: ``log_density(u: [..., P]) -> (log f(u): [...], grad_u log f(u): [..., P], aux: {name: [...]})``;
#: ``aux`` carries per-chain side values (the annealing terms) that follow the accepted position.
LogDensity = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]]


@dataclasses.dataclass
class HMCState:
    """Positions with their log-density, its gradient and side values, all evaluated at ``position``."""
    position: torch.Tensor                   # [..., P]
    log_density: torch.Tensor                # [...]
    grad: torch.Tensor                       # [..., P]
    aux: Dict[str, torch.Tensor]             # each [...]

    @classmethod
    def at(cls, position: torch.Tensor, log_density: LogDensity) -> "HMCState":
        """The state at ``position`` (one evaluation of ``log_density``)."""
        value, grad, aux = log_density(position)
        return cls(position, value, grad, aux)


def _select(accept: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` where ``accept: [...]``, else ``old`` (``[...]`` or ``[..., P]``)."""
    mask = accept.reshape(accept.shape + (1,) * (new.dim() - accept.dim()))
    return torch.where(mask, new, old)


def hmc_transition(state: HMCState, log_density: LogDensity, step_size: torch.Tensor,
                   num_leapfrog: int) -> Tuple[HMCState, torch.Tensor]:
    """One HMC transition of every chain: ``L = num_leapfrog`` leapfrog steps, then a Metropolis test.

    Args:
        state: the chains, with ``log_density`` and its gradient evaluated at their positions (the target
            of *this* transition: re-evaluate with :meth:`HMCState.at` when the target changed).
        log_density: the target, evaluated once per leapfrog step for all chains together.
        step_size: eps, broadcastable to the batch shape ``[...]`` (e.g. ``[1, B]`` for one per data point).
        num_leapfrog: L >= 1.

    Returns:
        ``(new state, acceptance probability [...])``; the probability, min(1, exp(-dH)), is 0 for a diverged
        proposal and is what step-size adaptation should read (less noisy than the accept indicator).
    """
    if num_leapfrog < 1:
        raise ValueError(f"num_leapfrog must be >= 1, got {num_leapfrog}")
    eps = step_size.reshape(step_size.shape + (1,)) if torch.is_tensor(step_size) else step_size   # [..., 1]
    momentum = torch.randn_like(state.position)                                       # [..., P]
    energy0 = -state.log_density + 0.5 * momentum.pow(2).sum(-1)                      # [...]
    position, grad = state.position, state.grad
    momentum = momentum + 0.5 * eps * grad                                            # first half step
    for step in range(num_leapfrog):
        position = position + eps * momentum
        value, grad, aux = log_density(position)
        momentum = momentum + (eps if step < num_leapfrog - 1 else 0.5 * eps) * grad
    energy1 = -value + 0.5 * momentum.pow(2).sum(-1)
    log_ratio = (energy0 - energy1).nan_to_num(nan=-float("inf"), posinf=-float("inf"))
    log_ratio = torch.where(torch.isfinite(energy1), log_ratio, torch.full_like(log_ratio, -float("inf")))
    accept_prob = log_ratio.clamp(max=0).exp()                                        # [...]
    accept = torch.rand_like(accept_prob) < accept_prob
    new = HMCState(position=_select(accept, position, state.position),
                   log_density=_select(accept, value, state.log_density),
                   grad=_select(accept, grad, state.grad),
                   aux={k: _select(accept, v, state.aux[k]) for k, v in aux.items()})
    return new, accept_prob
