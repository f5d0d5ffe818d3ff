"""Training: the stochastic-variational-inference loop, checkpoints, warm-up, early stopping.

One step is exactly what ``pyro.infer.SVI.step`` does, with the optimiser made explicit::

    loss = objective.differentiable_loss(model, guide, x_batch, num_data=N)   # any pyro.infer.ELBO
    loss.backward(); clip_grad_norm_(params, clip_norm); adam.step()

We call the ELBO's ``differentiable_loss`` and drive one ``torch.optim.Adam`` over all parameters
(collected from a param-only trace, as Pyro's docs recommend for PyTorch optimisers) rather than
``SVI`` + ``pyro.optim``, because ``pyro.optim`` keeps one optimiser per parameter: global-norm
gradient clipping, standard learning-rate schedulers and an exact optimizer ``state_dict`` for
resuming all come for free with a single torch optimiser.

KL warm-up (Bowman et al. 2016; Sonderby et al. 2016) multiplies every *latent* sample site, in the
model and in the guide, by beta (:class:`LatentScaleMessenger`, a ``poutine.scale`` restricted to
unobserved sites), so the ELBO becomes ``E_q[log p(x|z)] - beta KL(q || p)``; beta rises linearly
from 0 to 1 over ``warmup_epochs``.  Validation always uses beta = 1, i.e. the true bound.

Never losing work: ``OUT/checkpoint.pt`` is rewritten atomically after every epoch and on Ctrl-C
(mid-epoch: the data order of an epoch is a function of (seed, epoch), so a resumed run replays the
rest of the epoch exactly); ``OUT/best.pt`` holds the model with the best validation bound; a
non-finite loss stops training with :class:`TrainingDiverged`, keeping the last good checkpoint.
"""
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import pyro
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from .contract import check_model, slice_data, state_preserved, uses_labels
from .checkpoint import (BEST, CHECKPOINT, FORMAT, METRICS, atomic_save, atomic_write_text, migrate_history,
                         refuse_overwrite)
from .config import TrainConfig
from .data import Dataset
from .evaluation import total_bound
from .factory import check_splits, objective_for
from .parallel import SingleProcess
from .objectives import bound_name
from .seeds import epoch_permutation, rng_state, seed_for, set_rng_state
from .version import __version__
from .warmup import LatentScaleMessenger, warmup_beta, warmup_beta_at_epoch_end
from .signals import SafeStream, StopOnSignal

def best_epoch(history: List[Dict[str, Any]]) -> int:
    """The epoch with the best validation bound (the first of equals), 0 before any epoch."""
    return max(history, key=lambda row: row["val_bound"])["epoch"] if history else 0


def epochs_since_best(history: List[Dict[str, Any]]) -> int:
    """Epochs finished since the best one: what early stopping's patience counts."""
    return history[-1]["epoch"] - best_epoch(history) if history else 0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def make_adam(params: List[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for these tensors (~3x faster steps on CPU for
    the same update rule), else the default implementation."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr)


# -- the loop ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _trainer_owned(module: Any) -> Iterator[None]:
    """A step of the trainer: the module need not register its parameters in Pyro's param store (the trainer's
    optimiser owns them) nor check each batch (the trainer checked its data set once): a module's
    ``register_params`` / ``validate_inputs`` flags, where it has them (:class:`~pyro_vae.VAE`), are off for the
    step and restored after it."""
    # plain instance attributes, set in the instance dict: nn.Module.__setattr__ costs ~30 Python calls a step
    attributes = vars(module)
    flags = {name: attributes[name] for name in ("register_params", "validate_inputs") if name in attributes}
    attributes.update(dict.fromkeys(flags, False))
    try:
        yield
    finally:
        attributes.update(flags)


class Trainer:
    """Trains any ``module`` with ``model(x, num_data=None)`` / ``guide(x, num_data=None)`` methods.

    Args:
        module: an ``nn.Module`` holding the parameters (e.g. a :class:`~pyro_vae.VAE`).
        data: the :class:`~pyro_vae.data.Dataset` (train split resampled per epoch if dynamic).
        config: the :class:`TrainConfig`.
        objective: any ``pyro.infer.ELBO``; default built from ``config.loss``.
        checkpoint_extra: stored in every checkpoint (e.g. ``model_kwargs`` to rebuild the module).
        on_step: called as ``on_step(trainer, epoch, step, loss)`` after every optimiser step.
        parallel: :class:`~pyro_vae.parallel.SingleProcess` (the default) or this process's
            :class:`~pyro_vae.parallel.DDPGroup`: every process trains on its share of each batch through
            ``DistributedDataParallel`` and only the writer (rank 0) writes files.
    """

    def __init__(self, module: torch.nn.Module, data: Dataset, config: TrainConfig,
                 objective: Optional[ELBO] = None, checkpoint_extra: Optional[Dict[str, Any]] = None,
                 on_step: Optional[Callable] = None, progress: bool = True, parallel: Optional[Any] = None):
        self.module, self.data, self.config = module, data, config
        self.objective = objective or objective_for(config)
        self.checkpoint_extra = checkpoint_extra or {}
        self.on_step, self.progress = on_step, progress
        self.device = next(module.parameters()).device
        self.parallel = parallel if parallel is not None else SingleProcess(self.device)
        self.out_dir = Path(config.out)
        self.num_train = data.train.shape[0]
        self.steps_per_epoch = math.ceil(self.num_train / config.batch_size)
        self.valid = data.valid.to(self.device)
        # side inputs the model asks for by name (pyro_vae.contract): class labels ``y``
        self.uses_labels = uses_labels(module)
        missing = [split for split in ("train", "valid", "test") if data.labels(split) is None]
        if self.uses_labels and missing:
            raise ValueError(f"{type(module).__name__}.model takes labels y, but the data set {data.name!r} has no "
                             f"labels for its {', '.join(missing)} split(s)")
        self.train_data, self.valid_data = self.side_inputs("train"), self.side_inputs("valid")
        check_splits(module, data, config)           # every split against the model's check_input, once
        if self.valid.shape[0] >= 3:
            # the objective's data plate (IWAE_ELBO(plate=...)), else the module's (VAE(data_plate=...))
            plate = getattr(self.objective, "plate", None) or getattr(module, "data_plate", "data")
            check_model(module, self.valid, num_data=self.num_train, plate=plate, **self.valid_data)
        # progress through training: everything needed to continue exactly where we stopped
        self.epoch, self.step = 0, 0
        self.epoch_loss_sum, self.epoch_start_time = 0.0, None
        self.history: List[Dict[str, float]] = []
        self._stop_requested = False
        self.stop_signal: Optional[int] = None       # the signal that stopped fit(), if one did
        self._check_next_step = is_validation_enabled()   # Pyro's checks on a trainer's first step (and each fit's)
        # KL warm-up wraps the programs once (a stable identity: objectives cache per program); beta is set per step
        self._warmup = (LatentScaleMessenger(1.0), LatentScaleMessenger(1.0))
        self._warm_programs = (self._warmup[0](module.model), self._warmup[1](module.guide))
        self.params = self._collect_params()
        self.parallel.check_parameters(self._foreign_params)   # DDP synchronises module parameters only
        self._loss = self.parallel.loss_function(module, self.objective, self.num_train, self._probe)
        self.optimizer = make_adam(self.params, config.lr)
        self.scheduler = self._build_scheduler()

    # -- set-up ---------------------------------------------------------------------------------

    def side_inputs(self, split: str) -> Dict[str, torch.Tensor]:
        """The keyword arguments the programs take besides ``x`` for a whole split, on the model's device:
        ``{"y": labels [N]}`` for a model that takes labels, else ``{}``."""
        return {"y": self.data.labels(split).to(self.device)} if self.uses_labels else {}

    def _collect_params(self) -> List[torch.Tensor]:
        """All parameters the objective touches: the module's, plus any ``pyro.param`` of a user model."""
        x = self.valid[:2]   # binarized like the training batches (train holds grey levels in dynamic mode)
        data = {k: v[:2] for k, v in self.valid_data.items()}
        with poutine.trace(param_only=True) as capture:
            with poutine.block(hide_types=["sample"]), torch.no_grad():
                self.objective.loss(self.module.model, self.module.guide, x, **data)
        params = {id(p): p for p in self.module.parameters() if p.requires_grad}
        self._foreign_params = []   # pyro.param names outside the module (not synchronised by DDP)
        for name, site in capture.trace.nodes.items():
            p = site["value"].unconstrained()
            if id(p) not in params:
                self._foreign_params.append(name)
            params.setdefault(id(p), p)
        return list(params.values())

    def _probe(self) -> Tuple[bool, bool]:
        """``(does some parameter get no gradient?, does a step change buffers?)`` from one loss on two
        validation points, leaving the random streams and the buffers as they were (what DDP needs to know)."""
        x, data = self.valid[:2], {k: v[:2] for k, v in self.valid_data.items()}
        params = [p for p in self.module.parameters() if p.requires_grad]
        with state_preserved(self.module, self.device) as buffers:
            loss = self.objective.differentiable_loss(self.module.model, self.module.guide, x,
                                                      num_data=self.num_train, **data)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            changed = [b for b, before in buffers if not torch.equal(b, before)]
        return any(g is None for g in grads), bool(changed)

    def _build_scheduler(self):
        if self.config.lr_schedule == "exponential":
            return torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=self.config.lr_gamma)
        if self.config.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.config.epochs)
        return None

    def beta(self) -> float:
        """KL warm-up weight for the next step (:func:`pyro_vae.warmup.warmup_beta`)."""
        return warmup_beta(self.epoch * self.steps_per_epoch + self.step, self.steps_per_epoch,
                           self.config.warmup_epochs)

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "pyro_vae_version": __version__,
            "config": self.config.to_dict(),
            "model_state": self.module.state_dict(),
            # pyro.param values of user models; nn.Module parameters ("name$$$...") live in model_state
            "param_store": {k: v for k, v in pyro.get_param_store().get_state()["params"].items() if "$$$" not in k},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch, "step": self.step, "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_elapsed": time.time() - self.epoch_start_time if self.epoch_start_time and self.step else 0.0,
            # derived from the history, stored for readers of the file
            "history": self.history, "best_val_bound": self.best_val_bound, "best_epoch": self.best_epoch,
            "epochs_since_best": epochs_since_best(self.history),
            "rng": rng_state(self.parallel.gpu),
            **self.checkpoint_extra,
        }

    def load_state_dict(self, ckpt: Dict[str, Any]) -> None:
        self.module.load_state_dict(ckpt["model_state"])  # in place: the optimizer's tensors stay the same
        store = pyro.get_param_store()
        with torch.no_grad():
            for name, unconstrained in ckpt["param_store"].items():
                if name in store:
                    store._params[name].copy_(unconstrained)   # in place, like the module's parameters
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.step, self.epoch_loss_sum = ckpt["epoch"], ckpt["step"], ckpt["epoch_loss_sum"]
        self.epoch_start_time = time.time() - ckpt["epoch_elapsed"]   # time already spent in a half-done epoch
        self.history = migrate_history(ckpt["history"], self.bound_name)
        set_rng_state(ckpt["rng"], self.parallel.gpu)

    def save_checkpoint(self) -> None:
        if self.parallel.is_writer:   # distributed: rank 0 writes for all (the ranks' parameters are identical)
            atomic_save(self.state_dict(), self.out_dir / CHECKPOINT)

    def _save_best(self) -> None:
        if not self.parallel.is_writer:
            return
        atomic_save({"format": FORMAT, "config": self.config.to_dict(), "model_state": self.module.state_dict(),
                     "epoch": self.epoch, "val_bound": self.best_val_bound, "bound": self.bound_name,
                     **self.checkpoint_extra},
                    self.out_dir / BEST)

    def _write_metrics(self) -> None:
        if not self.parallel.is_writer:
            return
        atomic_write_text("".join(json.dumps(row) + "\n" for row in self.history), self.out_dir / METRICS)

    # -- running --------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and return after the current step (what Ctrl-C does)."""
        self._stop_requested = True

    @property
    def bound_name(self) -> str:
        """The name of the objective's bound ("ELBO", "IWAE_5", ...): what validation reports and early stopping
        compares."""
        return bound_name(self.objective)

    def split_bounds(self, module: Any, x: torch.Tensor, seed: int, **data) -> Tuple[float, float]:
        """``(objective's bound, ELBO)`` per datapoint of ``module`` on ``x: [N, D]`` with beta = 1 (the true
        bounds), higher is better; the ELBO is the objective's own figure where its bound is the ELBO, else
        ``Trace_ELBO`` with one particle.  Each uses the fixed random stream ``seed`` (common random numbers
        across epochs, so epoch-to-epoch changes are not Monte-Carlo noise) without disturbing the training
        stream.  Distributed: each rank evaluates its contiguous shard (seed + rank) as part of the whole set
        (``num_data = N``, so global latents count once), and the sums are reduced."""
        start, stop = self.parallel.shard_bounds(x.shape[0])
        objectives = [self.objective] + ([] if self.bound_name == "ELBO" else [Trace_ELBO()])
        totals = [0.0] * len(objectives)
        if stop > start:
            for i, objective in enumerate(objectives):
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(seed + self.parallel.rank)
                    totals[i] = total_bound(objective, module.model, module.guide, x[start:stop],
                                            self.config.eval_batch_size, num_data=x.shape[0],
                                            **slice_data(data, x.shape[0], start, stop))
        totals = self.parallel.all_reduce_sum(totals)
        return totals[0] / x.shape[0], totals[-1] / x.shape[0]

    def validation_bounds(self) -> Tuple[float, float]:
        """``(objective's bound, ELBO)`` per datapoint on the validation split (see :meth:`split_bounds`)."""
        return self.split_bounds(self.module, self.valid, seed_for(self.config.seed, "validation"), **self.valid_data)

    def _programs(self) -> Tuple[Callable, Callable]:
        """The model and guide for the next step: KL warm-up scales their latent sites by beta < 1."""
        beta = self.beta()
        if beta == 1.0:
            return self.module.model, self.module.guide
        for messenger in self._warmup:
            messenger.scale = beta
        return self._warm_programs

    def train_step(self, x: torch.Tensor, batch_size: Optional[int] = None, **data) -> float:
        """One optimiser step on this process's share ``x: [b, D]`` of a batch of ``batch_size`` points (default
        ``b``: one process; ``**data``: the share's side inputs, e.g. labels ``y: [b]``); returns the batch's loss
        (per full data set), the same number in every process."""
        batch_size = x.shape[0] if batch_size is None else batch_size
        model, guide = self._programs()
        # Pyro's own checks (model/guide site match, shapes) run on the first step of each fit();
        # once they pass, the program's structure is fixed and re-checking costs ~1 ms per step.
        with pyro.validation_enabled(self._check_next_step and x.shape[0] > 0), _trainer_owned(self.module):
            loss = self._loss(x, model, guide, **data)     # N / b * sum over the share (0 for an empty share)
        self._check_next_step = False
        stop = self._stop_requested or self.parallel.external_stop()
        reduced = self.parallel.start_step_reduce(loss, x.shape[0], batch_size, self.num_train, stop)
        self.optimizer.zero_grad(set_to_none=True)
        weight = self.parallel.share_weight(x.shape[0], batch_size)     # 1 in one process
        (loss if weight == 1.0 else loss * weight).backward()
        loss_value, _ = reduced()
        if not math.isfinite(loss_value):           # every process raises together, before any update
            raise self._diverged(f"loss became {loss_value} at epoch {self.epoch + 1}, step {self.step + 1} "
                                 f"(of {self.steps_per_epoch})")
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        self.optimizer.step()
        return loss_value

    def _stopping(self) -> bool:
        return self.parallel.agree_stop(self._stop_requested)

    def _diverged(self, what: str) -> TrainingDiverged:
        if self.epoch == 0:
            kept = "no checkpoint was written (it diverged in the first epoch)"
            advice = "start again with a smaller --lr or with --clip-norm 1"
        else:
            kept = f"the last good checkpoint {self.out_dir / CHECKPOINT} (after epoch {self.epoch}) is kept"
            advice = ("continue it with --resume --clip-norm 1, or start a new --out with a smaller --lr")
        return TrainingDiverged(f"{what}; {kept}. To recover, {advice}.")

    def _finish_epoch(self) -> bool:
        """Validate, log, checkpoint; returns True if early stopping says stop.

        Nothing is saved unless the parameters and the validation bound are finite: a step whose loss
        was finite can still leave NaN weights, and those must never become "the last good checkpoint".
        """
        val_bound, val_elbo = self.validation_bounds()
        if not math.isfinite(val_bound) or not all(torch.isfinite(p).all() for p in self.params):
            raise self._diverged(f"the parameters or the validation {self.bound_name} bound ({val_bound}) became "
                                 f"non-finite during epoch {self.epoch + 1}")
        self.epoch += 1
        self.step = 0
        row = {"epoch": self.epoch,
               "train_loss": self.epoch_loss_sum / self.num_train,
               "val_bound": val_bound,          # the objective's bound, named by val_bound_name; early stopping's
               "val_bound_name": self.bound_name,
               "val_elbo": val_elbo,            # the ELBO (one particle), whatever the objective
               "beta": self.beta_at_epoch_end(),
               "lr": self.optimizer.param_groups[0]["lr"],
               "seconds": time.time() - self.epoch_start_time}
        self.history.append(row)
        self.epoch_loss_sum = 0.0
        if self.scheduler is not None:
            self.scheduler.step()
        if self.best_epoch == self.epoch:
            self._save_best()
        self.save_checkpoint()
        self._write_metrics()
        return self._patience_exhausted()

    @property
    def best_epoch(self) -> int:
        return best_epoch(self.history)

    @property
    def best_val_bound(self) -> float:
        """The best validation bound so far (-inf before the first epoch)."""
        return self.history[self.best_epoch - 1]["val_bound"] if self.history else -math.inf

    def _patience_exhausted(self) -> bool:
        return 0 < self.config.patience <= epochs_since_best(self.history)

    def beta_at_epoch_end(self) -> float:
        return warmup_beta_at_epoch_end(self.epoch, self.config.warmup_epochs)

    def fit(self) -> str:
        """Run until ``config.epochs``, early stopping, or a stop request; returns the reason.

        A fresh trainer refuses to start in a folder that already holds a checkpoint (never overwrite a
        run by accident); load it with :meth:`load_state_dict` to continue it.
        """
        if self.epoch == 0 and self.step == 0 and not self.history:   # fresh: never overwrite a run
            refuse_overwrite(self.out_dir)
        if self.parallel.is_writer:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        total = self.config.epochs * self.steps_per_epoch
        done = min(self.epoch * self.steps_per_epoch + self.step, total)
        bar = tqdm(total=total, initial=done, disable=not self.progress or not self.parallel.is_writer, unit="step",
                   dynamic_ncols=True, desc="train", file=SafeStream(sys.stderr))
        # Ctrl-C / SIGTERM: finish the step, save, return (the processes of a data-parallel run are stopped by
        # their launcher, which relays the signal to every one)
        stop_on_signal = StopOnSignal(self.request_stop, active=self.parallel.handles_signals)
        if self.parallel.rank > 0:   # rank 0 continues the saved stream; the others draw their own noise
            pyro.set_rng_seed(seed_for(self.config.seed, "rank", self.epoch, self.step, self.parallel.rank))
        self._check_next_step = is_validation_enabled()
        with stop_on_signal:
            try:
                if self._patience_exhausted():
                    return "early_stopping"
                while self.epoch < self.config.epochs:
                    if self.step == 0:
                        self.epoch_start_time = time.time()
                    x_epoch = self.data.train_epoch(self.epoch, self.config.seed)    # [N_train, D]
                    order = epoch_permutation(self.num_train, self.config.seed, self.epoch)
                    while self.step < self.steps_per_epoch:
                        if self._stopping():
                            self.save_checkpoint()
                            return "interrupted"
                        idx = order[self.step * self.config.batch_size:(self.step + 1) * self.config.batch_size]
                        mine = self.parallel.shard(idx)                # this process's share
                        data = {k: v[mine] for k, v in self.train_data.items()}
                        loss = self.train_step(x_epoch[mine].to(self.device), len(idx), **data)
                        self.epoch_loss_sum += loss * len(idx) / self.num_train
                        self.step += 1
                        bar.update(1)
                        if self.on_step is not None:
                            self.on_step(self, self.epoch, self.step, loss)
                    should_stop = self._finish_epoch()
                    last = self.history[-1]
                    bar.set_postfix(epoch=self.epoch, loss=f"{last['train_loss']:.2f}",
                                    **{f"val_{self.bound_name}": f"{last['val_bound']:.2f}"},
                                    best=f"{self.best_val_bound:.2f}")
                    if should_stop:
                        return "early_stopping"
                return "completed"
            finally:
                bar.close()
                self.stop_signal = stop_on_signal.received or self.stop_signal
