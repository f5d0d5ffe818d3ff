"""KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): the latent sites' log-densities scaled by beta.

:class:`LatentScaleMessenger` multiplies every *latent* sample site, in the model and in the guide, by beta,
so the ELBO becomes ``E_q[log p(x|z)] - beta KL(q || p)``, for any model/guide pair; :func:`warmup_beta` is beta
as a pure function of the step: linear from 0 to 1 over ``warmup_epochs`` epochs (1 without warm-up);
:class:`KLWarmup` hands the trainer the programs of a step.
Validation and test always use beta = 1, the true bound.
"""
from typing import Callable, Tuple

from pyro.poutine.messenger import Messenger


class LatentScaleMessenger(Messenger):
    """Multiply the log-density of every unobserved sample site by ``scale`` (observed sites untouched).

    Wrapped around both the model and the guide, ``scale = beta`` turns ``log p(x|z) + log p(z) -
    log q(z|x)`` into ``log p(x|z) + beta (log p(z) - log q(z|x))``: the KL term of the ELBO weighted
    by beta, for any model/guide pair.  Unlike ``poutine.scale`` it allows ``scale = 0``.
    """

    def __init__(self, scale: float):
        super().__init__()
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


def warmup_beta(steps_done: int, steps_per_epoch: int, warmup_epochs: float) -> float:
    """beta for the step after ``steps_done`` steps: ``min(1, (steps_done + 1) / (warmup_epochs * steps_per_epoch))``,
    1 when ``warmup_epochs`` is 0 (no warm-up)."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (steps_done + 1) / (warmup_epochs * steps_per_epoch))


def warmup_beta_at_epoch_end(epoch: int, warmup_epochs: float) -> float:
    """beta after ``epoch`` finished epochs (what the metrics log reports per epoch)."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch / warmup_epochs)


class KLWarmup:
    """The model and guide of each training step under warm-up: the programs themselves once beta is 1 (no
    messenger in the way), else both wrapped, once, in a :class:`LatentScaleMessenger` set to the step's beta
    (a stable identity: objectives cache per program)."""

    def __init__(self, model: Callable, guide: Callable, warmup_epochs: float, steps_per_epoch: int):
        self.model, self.guide = model, guide
        self.warmup_epochs, self.steps_per_epoch = warmup_epochs, steps_per_epoch
        self.messengers = (LatentScaleMessenger(1.0), LatentScaleMessenger(1.0))
        self.wrapped = (self.messengers[0](model), self.messengers[1](guide))

    def beta(self, steps_done: int) -> float:
        """beta for the step after ``steps_done`` steps of the run (:func:`warmup_beta`)."""
        return warmup_beta(steps_done, self.steps_per_epoch, self.warmup_epochs)

    def programs(self, steps_done: int) -> Tuple[Callable, Callable]:
        """``(model, guide)`` for the step after ``steps_done`` steps."""
        beta = self.beta(steps_done)
        if beta == 1.0:
            return self.model, self.guide
        for messenger in self.messengers:
            messenger.scale = beta
        return self.wrapped
