"""Training: stochastic variational inference with any ``pyro.infer.ELBO``, one step at a time.

One step is exactly what ``pyro.infer.SVI.step`` does, with the optimiser made explicit::

    loss = objective.differentiable_loss(model, guide, x_batch, num_data=N)   # any pyro.infer.ELBO
    loss.backward(); clip_grad_norm_(params, clip_norm); adam.step()

We call the ELBO's ``differentiable_loss`` and drive one ``torch.optim.Adam`` over all parameters
(collected from a param-only trace, as Pyro's docs recommend for PyTorch optimisers) rather than
``SVI`` + ``pyro.optim``, because ``pyro.optim`` keeps one optimiser per parameter: global-norm
gradient clipping, standard learning-rate schedulers and an exact optimizer ``state_dict`` for
resuming all come for free with a single torch optimiser.

:class:`Trainer` has one :meth:`~Trainer.step` for one process or N (its ``parallel`` says how a batch is shared;
for one process the share weight is 1 and every reduction the identity) and one :meth:`~Trainer.fit` over an
explicit :class:`TrainState`.  Everything around the steps (checkpoints, the metrics log, early stopping,
progress, the Ctrl-C/SIGTERM stop) is a hook of :mod:`pyro_vae.hooks`.

KL warm-up (:mod:`pyro_vae.warmup`) scales every latent site, in the model and in the guide, by beta, which rises
linearly from 0 to 1 over ``warmup_epochs``; validation always uses beta = 1, the true bound.  The data order of
an epoch is a function of (seed, epoch), so a run resumed mid-epoch replays the rest of the epoch exactly; a
non-finite loss stops training with :class:`TrainingDiverged`, keeping the last good checkpoint.
"""
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import pyro
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled

from .bounds import split_bounds
from .compiled import CompiledStep
from .checkpoint import CHECKPOINT, load_checkpoint, migrate_history, restore_training, training_checkpoint
from .config import TrainConfig, check_resume
from .contract import checked_once, side_inputs
from .data import Dataset
from .factory import build_scheduler, check_training, make_adam, module_record, objective_for
from .hooks import Hook, default_hooks, notify
from .objectives import bound_name
from .parallel import SingleProcess
from .params import ddp_probe, trained_parameters
from .seeds import epoch_permutation, seed_for
from .tensorboard_hook import TensorBoardLogger
from .warmup import KLWarmup, warmup_beta_at_epoch_end
from .wording import usage_error

__all__ = ["Trainer", "TrainState", "TrainingDiverged", "TrainConfig", "best_epoch", "epochs_since_best"]


def best_epoch(history: List[Dict[str, Any]]) -> int:
    """The epoch with the best validation bound (the first of equals), 0 before any epoch."""
    return max(history, key=lambda row: row["val_bound"])["epoch"] if history else 0


def epochs_since_best(history: List[Dict[str, Any]]) -> int:
    """Epochs finished since the best one: what early stopping's patience counts."""
    return history[-1]["epoch"] - best_epoch(history) if history else 0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainState:
    """Where a run stands: with the random streams (saved beside it), everything needed to continue exactly.
    The best epoch and early stopping's patience are functions of the history, not stored state."""
    epoch: int = 0                      # finished epochs
    step: int = 0                       # finished steps of the current epoch
    epoch_loss_sum: float = 0.0         # the current epoch's training loss so far (sum of loss * b / N)
    epoch_start_time: Optional[float] = None
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)   # one metrics row per epoch

    @property
    def is_fresh(self) -> bool:
        return self.epoch == 0 and self.step == 0 and not self.history

    @property
    def best_epoch(self) -> int:
        return best_epoch(self.history)

    @property
    def best_val_bound(self) -> float:
        """The best validation bound so far (-inf before the first epoch)."""
        return self.history[self.best_epoch - 1]["val_bound"] if self.history else -math.inf

    @property
    def epochs_since_best(self) -> int:
        return epochs_since_best(self.history)

    def steps_done(self, steps_per_epoch: int) -> int:
        return self.epoch * steps_per_epoch + self.step

    def close_epoch(self, num_train: int, **measures: Any) -> Dict[str, Any]:
        """Count the finished epoch and append its metrics row: ``epoch``, ``train_loss`` (per datapoint),
        ``measures`` (the validation bounds, beta, lr), ``seconds``; the row is returned."""
        self.epoch, self.step = self.epoch + 1, 0
        row = {"epoch": self.epoch, "train_loss": self.epoch_loss_sum / num_train, **measures,
               "seconds": time.time() - self.epoch_start_time}
        self.history.append(row)
        self.epoch_loss_sum = 0.0
        return row

    def to_dict(self) -> Dict[str, Any]:
        """What a checkpoint stores (the best epoch and patience too, for readers of the file)."""
        elapsed = time.time() - self.epoch_start_time if self.epoch_start_time and self.step else 0.0
        return {"epoch": self.epoch, "step": self.step, "epoch_loss_sum": self.epoch_loss_sum,
                "epoch_elapsed": elapsed, "history": self.history, "best_val_bound": self.best_val_bound,
                "best_epoch": self.best_epoch, "epochs_since_best": self.epochs_since_best}

    @classmethod
    def from_checkpoint(cls, ckpt: Dict[str, Any], bound: str) -> "TrainState":
        """The state a checkpoint stored (a half-done epoch's time so far counts on); ``bound``: the objective's
        bound name, for histories written before the bounds were named."""
        return cls(ckpt["epoch"], ckpt["step"], ckpt["epoch_loss_sum"], time.time() - ckpt["epoch_elapsed"],
                   migrate_history(ckpt["history"], bound))


def diverged(what: str, epoch: int, out_dir: Path) -> TrainingDiverged:
    """The error for a non-finite loss or parameter, saying what was kept and how to recover."""
    if epoch == 0:
        kept = "no checkpoint was written (it diverged in the first epoch)"
        python, cli = ("start again with a smaller lr or with clip_norm=1 (TrainConfig)",
                       "start again with a smaller --lr or with --clip-norm 1")
    else:
        kept = f"the last good checkpoint {out_dir / CHECKPOINT} (after epoch {epoch}) is kept"
        python, cli = ("continue it with clip_norm=1 and resume=True, or start a new out folder with a smaller lr",
                       "continue it with --resume --clip-norm 1, or start a new --out with a smaller --lr")
    return usage_error(TrainingDiverged, f"{what}; {kept}. To recover, {python}.", f"{what}; {kept}. To recover, {cli}.")


def resume_checkpoint(config: TrainConfig) -> Dict[str, Any]:
    """The checkpoint of the run in ``config.out`` that a run under ``config`` continues, or a clear error: no
    checkpoint there, or one saved under a config that differs where a resume cannot follow
    (:func:`~pyro_vae.config.check_resume`)."""
    path = Path(config.out) / CHECKPOINT
    if not path.exists():
        raise usage_error(FileNotFoundError, f"resume=True, but there is no checkpoint at {path} to continue",
                          f"--resume given but there is no checkpoint at {path}")
    ckpt = load_checkpoint(path)
    check_resume(ckpt["config"], config, path)
    return ckpt


def backward(params: Sequence[torch.Tensor], loss: torch.Tensor, grads: Optional[Sequence[torch.Tensor]],
             weight: float) -> None:
    """The step's gradients into ``p.grad``: a recorded step's ``grads``, or backpropagated from ``loss`` times
    this process's share weight (1 in one process)."""
    if grads is not None:
        for p, g in zip(params, grads):
            p.grad = g
    else:
        (loss if weight == 1.0 else loss * weight).backward()


def first_stop(hooks: Sequence[Hook], trainer: "Trainer") -> Optional[str]:
    """The first reason a hook gives to stop (early stopping's "early_stopping"), else None."""
    return next((reason for reason in (hook.stop_reason(trainer) for hook in hooks) if reason), None)


def epoch_batches(x_epoch: torch.Tensor, side: Dict[str, torch.Tensor], order: torch.Tensor, batch_size: int,
                  start: int, parallel: Any) -> Iterator[Tuple[torch.Tensor, int, Dict[str, torch.Tensor]]]:
    """``(x share [b, D], batch size B, side-input shares)`` for each batch of an epoch from step ``start`` on:
    batch s is ``order[s B:(s + 1) B]`` of ``x_epoch: [N, D]``, of which this process takes its share."""
    for first in range(start * batch_size, len(order), batch_size):
        idx = order[first:first + batch_size]
        mine = parallel.shard(idx)
        yield x_epoch[mine], len(idx), {k: v[mine] for k, v in side.items()}


class Trainer:
    """Trains any ``module`` with ``model(x, num_data=None)`` / ``guide(x, num_data=None)`` programs.

    Args:
        module, data, config: an ``nn.Module`` holding the parameters (e.g. a :class:`~pyro_vae.VAE`), the
            :class:`~pyro_vae.data.Dataset` (train split resampled per epoch if dynamic), the :class:`TrainConfig`.
        objective: any ``pyro.infer.ELBO`` (default from ``config.loss``); checkpoint_extra: saved in checkpoints
            (default: the module's spec where it has one, so ``pyro_vae.load(config.out)`` rebuilds the model).
        on_step: called as ``on_step(trainer, epoch, step, loss)`` after every optimiser step.
        progress: True (a bar where stderr is a terminal, one line per epoch where it is not), "bar", "lines", or
            False (nothing per epoch); see :class:`~pyro_vae.hooks.Progress`.
        parallel: :class:`~pyro_vae.parallel.SingleProcess` (default) or this process's
            :class:`~pyro_vae.parallel.DDPGroup` (each process trains on its share of each batch; rank 0 writes).
        optimizer, scheduler: default fused Adam at ``config.lr`` over :attr:`params` (all the objective touches),
            the schedule ``config.lr_schedule`` names; hooks: called after :func:`~pyro_vae.hooks.default_hooks`
            (and a :class:`~pyro_vae.tensorboard_hook.TensorBoardLogger` is added where ``config.tensorboard`` asks
            for one and ``hooks`` holds none).
    """

    def __init__(self, module: torch.nn.Module, data: Dataset, config: TrainConfig,
                 objective: Optional[ELBO] = None, checkpoint_extra: Optional[Dict[str, Any]] = None,
                 on_step: Optional[Callable] = None, progress: Union[bool, str] = True,
                 parallel: Optional[Any] = None, *,
                 optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
                 hooks: Sequence[Hook] = ()):
        self.module, self.data, self.config = module, data, config
        # what rebuilds the model from a checkpoint (pyro_vae.load): the spec of a module declared in Python
        self.checkpoint_extra = (checkpoint_extra if checkpoint_extra is not None
                                 else module_record(module, data.image_shape))
        hooks = list(hooks)
        if config.tensorboard and not any(isinstance(hook, TensorBoardLogger) for hook in hooks):
            hooks.append(TensorBoardLogger.for_config(config))   # a missing package fails here, before any step
        self.objective = objective or objective_for(config)
        self.bound_name = bound_name(self.objective)   # "ELBO", "IWAE_5", ...: what validation and early stopping use
        self.device = next(module.parameters()).device
        self.parallel = parallel if parallel is not None else SingleProcess(self.device)
        self.out_dir, self.num_train = Path(config.out), data.train.shape[0]
        self.steps_per_epoch = math.ceil(self.num_train / config.batch_size)
        check_training(module, self.objective, data, config, self.device)   # clear errors before any work
        self.valid = data.valid.to(self.device)
        self.train_data, self.valid_data = (side_inputs(module, data, s, self.device) for s in ("train", "valid"))
        self.state, self.stop_signal, self._stop_requested = TrainState(), None, False
        self._check_next_step = is_validation_enabled()   # Pyro's checks on the first step (and each fit's)
        self.warmup = KLWarmup(module.model, module.guide, config.warmup_epochs, self.steps_per_epoch)
        two = {k: v[:2] for k, v in self.valid_data.items()}   # valid: binarized like the training batches
        self.params, self.foreign_params = trained_parameters(module, self.objective, self.valid[:2], **two)
        self._loss = self.parallel.loss_function(module, self.objective, self.num_train, lambda: ddp_probe(
            module, self.objective, self.valid[:2], self.num_train, self.device, **two), self.foreign_params)
        self.optimizer = optimizer or make_adam(self.params, config.lr)
        self.scheduler = scheduler if scheduler is not None else build_scheduler(config, self.optimizer)
        self.hooks = default_hooks(config.patience, progress, on_step) + hooks
        self.compiled = CompiledStep(module, self.objective, self.params, self.num_train, config.compile,
                                     lambda line: notify(self.hooks, self, line), self.parallel.world_size > 1)

    epoch, history, best_epoch, best_val_bound = (property(lambda self, name=name: getattr(self.state, name))
                                                  for name in ("epoch", "history", "best_epoch", "best_val_bound"))

    def beta(self) -> float:
        """KL warm-up weight for the next step (:func:`pyro_vae.warmup.warmup_beta`)."""
        return self.warmup.beta(self.state.steps_done(self.steps_per_epoch))

    def state_dict(self) -> Dict[str, Any]:
        """The contents of ``checkpoint.pt`` (:func:`pyro_vae.checkpoint.training_checkpoint`)."""
        return training_checkpoint(config=self.config.to_dict(), module=self.module, optimizer=self.optimizer,
                                   scheduler=self.scheduler, progress=self.state.to_dict(), gpu=self.parallel.gpu,
                                   extra=self.checkpoint_extra)

    def load_state_dict(self, ckpt: Dict[str, Any]) -> None:
        """Continue from a checkpoint: parameters, optimiser, schedule, random streams and :class:`TrainState`."""
        restore_training(ckpt, self.module, self.optimizer, self.scheduler, self.parallel.gpu)
        self.state = TrainState.from_checkpoint(ckpt, self.bound_name)

    def request_stop(self) -> None:
        """Ask :meth:`fit` to save a checkpoint and return after the current step (what Ctrl-C does)."""
        self._stop_requested = True

    def step(self, x: torch.Tensor, batch_size: Optional[int] = None, **data) -> float:
        """One optimiser step on this process's share ``x: [b, D]`` of a batch of ``batch_size`` points (default
        ``b``: one process; ``**data``: the share's side inputs, e.g. labels ``y: [b]``); returns the batch's loss
        (per full data set), the same number in every process."""
        batch_size = x.shape[0] if batch_size is None else batch_size
        model, guide = self.warmup.programs(self.state.steps_done(self.steps_per_epoch))   # KL warm-up's beta
        # Pyro's checks (site match, shapes) on the first step of each fit(); then ~1 ms a step for nothing
        # the first step of a fit and KL warm-up's (beta < 1, a new scale each step) are eager; the others replay
        recordable = not self._check_next_step and model is self.warmup.model
        with pyro.validation_enabled(self._check_next_step and x.shape[0] > 0), checked_once(self.module):
            recorded = self.compiled(x, model, guide, **data) if recordable else None   # (loss, grads) or None
            loss = self._loss(x, model, guide, **data) if recorded is None else recorded[0]   # N / b * share's sum
        self._check_next_step = False
        stop = self._stop_requested or self.parallel.external_stop()
        reduced = self.parallel.start_step_reduce(loss, x.shape[0], batch_size, self.num_train, stop)
        self.optimizer.zero_grad(set_to_none=True)
        backward(self.params, loss, recorded and recorded[1], self.parallel.share_weight(x.shape[0], batch_size))
        loss_value, _ = reduced()
        if not math.isfinite(loss_value):           # every process raises together, before any update
            raise diverged(f"loss became {loss_value} at epoch {self.epoch + 1}, step {self.state.step + 1} "
                           f"(of {self.steps_per_epoch})", self.epoch, self.out_dir)
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        self.optimizer.step()
        return loss_value

    def validation_bounds(self) -> Tuple[float, float]:
        """``(objective's bound, ELBO)`` per validation point (:func:`pyro_vae.bounds.split_bounds`)."""
        return split_bounds(self.objective, self.module, self.valid, seed_for(self.config.seed, "validation"),
                            self.config.eval_batch_size, self.parallel, **self.valid_data)

    def _end_epoch(self) -> None:
        """Validate, append the epoch's metrics row, step the schedule, tell the hooks; non-finite weights (a finite
        loss can leave them) or bound raise before anything is saved, never becoming "the last good checkpoint"."""
        val_bound, val_elbo = self.validation_bounds()   # the objective's bound (named) and the ELBO
        if not math.isfinite(val_bound) or not all(torch.isfinite(p).all() for p in self.params):
            raise diverged(f"the parameters or the validation {self.bound_name} bound ({val_bound}) became "
                           f"non-finite during epoch {self.epoch + 1}", self.epoch, self.out_dir)
        beta = warmup_beta_at_epoch_end(self.epoch + 1, self.config.warmup_epochs)
        row = self.state.close_epoch(self.num_train, val_bound=val_bound, val_bound_name=self.bound_name,
                                     val_elbo=val_elbo, beta=beta, lr=self.optimizer.param_groups[0]["lr"],
                                     compile_seconds=self.compiled.take_seconds())
        if self.scheduler is not None:
            self.scheduler.step()
        for hook in self.hooks:
            hook.on_epoch_end(self, row)

    def _epochs(self) -> str:
        state, config = self.state, self.config
        reason = first_stop(self.hooks, self)
        while reason is None and state.epoch < config.epochs:
            if state.step == 0:
                state.epoch_start_time = time.time()
            x_epoch = self.data.train_epoch(state.epoch, config.seed)    # [N_train, D]
            order = epoch_permutation(self.num_train, config.seed, state.epoch)
            for x, size, side in epoch_batches(x_epoch, self.train_data, order, config.batch_size, state.step,
                                               self.parallel):
                if self.parallel.agree_stop(self._stop_requested):
                    return "interrupted"
                loss = self.step(x.to(self.device), size, **side)
                state.epoch_loss_sum += loss * size / self.num_train
                state.step += 1
                for hook in self.hooks:
                    hook.on_step_end(self, loss)
            self._end_epoch()
            reason = first_stop(self.hooks, self)
        return reason or "completed"

    def fit(self, resume: bool = False) -> str:
        """Run until ``config.epochs``, a hook's stop (early stopping) or a stop request; returns "completed",
        "early_stopping" or "interrupted".  A fresh trainer never overwrites a run folder's checkpoint: with
        ``resume=True`` it continues the run in ``config.out`` from its ``checkpoint.pt`` exactly where it stopped
        (parameters, optimiser, schedule, random streams, history; ``config.epochs`` and the other settings of
        :data:`~pyro_vae.config.RESUMABLE_CHANGES` may differ from the saved run's), as
        ``pyro-vae train --resume`` does.  (Loading a checkpoint with :meth:`load_state_dict` first does the same.)"""
        if resume and self.state.is_fresh:
            self.load_state_dict(resume_checkpoint(self.config))
        if self.parallel.rank > 0:   # rank 0 continues the saved stream; the others draw their own noise
            pyro.set_rng_seed(seed_for(self.config.seed, "rank", self.state.epoch, self.state.step, self.parallel.rank))
        self._check_next_step = is_validation_enabled()
        reason, started = None, []
        try:
            for hook in self.hooks:
                hook.on_fit_start(self)
                started.append(hook)
            reason = self._epochs()
            return reason
        finally:
            for hook in reversed(started):                  # like leaving nested with-blocks
                hook.on_fit_end(self, reason)
