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
import dataclasses
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import pyro
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from . import distributed
from .contract import check_model, slice_data, state_preserved, uses_labels
from .checkpoint import (BEST, CHECKPOINT, CONFIG, FORMAT, METRICS, SUMMARY, atomic_save, atomic_write_text,
                         load_checkpoint, migrate_history, run_lock)
from .config import RESUMABLE_CHANGES, TrainConfig
from .data import Dataset, load_dataset
from .evaluation import total_bound
from .devices import resolve_device
from .factory import build_model, check_splits, config_bound_name, load_vae, objective_for
from .objectives import bound_name
from .seeds import epoch_permutation, rng_state, seed_for, set_rng_state
from .warmup import LatentScaleMessenger, warmup_beta, warmup_beta_at_epoch_end
from .signals import SafeStream, StopOnSignal
from .vae import VAE

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

@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.  ``history`` has one dict per finished epoch (as in metrics.jsonl)."""
    model: Any
    history: List[Dict[str, float]]
    best_epoch: int
    best_val_bound: float   # the objective's bound on the validation set, named by ``bound``
    stop_reason: str        # "completed" | "early_stopping" | "interrupted"
    out_dir: Path
    bound: str = "ELBO"     # e.g. "IWAE_5": what early stopping compared (pyro_vae.objectives.bound_name)
    stop_signal: Optional[int] = None   # SIGINT or SIGTERM when a signal interrupted the run
    already_finished: bool = False      # a resume of a finished run: nothing was trained or rewritten

    @property
    def best_val_elbo(self) -> float:
        """The old name of :attr:`best_val_bound` (which holds the objective's bound: the ELBO only when
        ``bound == "ELBO"``)."""
        warnings.warn("TrainResult.best_val_elbo is best_val_bound, the objective's bound named by "
                      "TrainResult.bound; use those names", DeprecationWarning, stacklevel=2)
        return self.best_val_bound


class Trainer:
    """Trains any ``module`` with ``model(x, num_data=None)`` / ``guide(x, num_data=None)`` methods.

    Args:
        module: an ``nn.Module`` holding the parameters (e.g. a :class:`~pyro_vae.VAE`).
        data: the :class:`~pyro_vae.data.Dataset` (train split resampled per epoch if dynamic).
        config: the :class:`TrainConfig`.
        objective: any ``pyro.infer.ELBO``; default built from ``config.loss``.
        checkpoint_extra: stored in every checkpoint (e.g. ``model_kwargs`` to rebuild the module).
        on_step: called as ``on_step(trainer, epoch, step, loss)`` after every optimiser step.
        rank, world_size: this process's place in an initialised ``torch.distributed`` process group
            (:mod:`pyro_vae.distributed`): with ``world_size > 1`` every rank trains on its share of each
            batch through ``DistributedDataParallel`` and only rank 0 writes files.
    """

    def __init__(self, module: torch.nn.Module, data: Dataset, config: TrainConfig,
                 objective: Optional[ELBO] = None, checkpoint_extra: Optional[Dict[str, Any]] = None,
                 on_step: Optional[Callable] = None, progress: bool = True, rank: int = 0, world_size: int = 1):
        self.module, self.data, self.config = module, data, config
        self.rank, self.world_size = rank, world_size
        self.objective = objective or objective_for(config)
        self.checkpoint_extra = checkpoint_extra or {}
        self.on_step, self.progress = on_step, progress
        self.device = next(module.parameters()).device
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
        if self.valid.shape[0] >= 3:
            # the objective's data plate (IWAE_ELBO(plate=...)), else the module's (VAE(data_plate=...))
            plate = getattr(self.objective, "plate", None) or getattr(module, "data_plate", "data")
            check_model(module, self.valid, num_data=self.num_train, plate=plate, **self.valid_data)
        # progress through training: everything needed to continue exactly where we stopped
        self.epoch, self.step = 0, 0
        self.epoch_loss_sum, self.epoch_start_time = 0.0, None
        self.history: List[Dict[str, float]] = []
        self.best_val_bound, self.best_epoch, self.epochs_since_best = -math.inf, 0, 0
        self._stop_requested = False
        self.stop_signal: Optional[int] = None       # the signal that stopped fit(), if one did
        # KL warm-up wraps the programs once (a stable identity: objectives cache per program); beta is set per step
        self._warmup = (LatentScaleMessenger(1.0), LatentScaleMessenger(1.0))
        self._warm_programs = (self._warmup[0](module.model), self._warmup[1](module.guide))
        self.params = self._collect_params()
        if world_size > 1:
            self._setup_distributed()
        self.optimizer = make_adam(self.params, config.lr)
        self.scheduler = self._build_scheduler()

    # -- set-up ---------------------------------------------------------------------------------

    def side_inputs(self, split: str) -> Dict[str, torch.Tensor]:
        """The keyword arguments the programs take besides ``x`` for a whole split, on the model's device:
        ``{"y": labels [N]}`` for a model that takes labels, else ``{}``."""
        return {"y": self.data.labels(split).to(self.device)} if self.uses_labels else {}

    def _own_gpu(self) -> Optional[torch.device]:
        """This process's GPU in a multi-GPU run (its random stream is the one it saves), else None."""
        return self.device if self.world_size > 1 and self.device.type == "cuda" else None

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

    def _setup_distributed(self) -> None:
        """Wrap the loss in DistributedDataParallel (which broadcasts rank 0's parameters and buffers)."""
        distributed.require_module_parameters(self._foreign_params)
        self._stop_agreed = False
        self.external_stop: Optional[Callable[[], bool]] = None   # e.g. the launcher's Ctrl-C event
        # DDP needs to know whether some parameter gets no gradient (it then searches the graph every step)
        # and whether a step changes buffers (batch-norm statistics: then it broadcasts rank 0's before every
        # step, a collective that constant buffers such as a prior's loc/scale do not need). Find out once, on
        # two validation points, leaving the random streams and the buffers as they were.
        x, data = self.valid[:2], {k: v[:2] for k, v in self.valid_data.items()}
        params = [p for p in self.module.parameters() if p.requires_grad]
        with state_preserved(self.module, self.device) as buffers:
            loss = self.objective.differentiable_loss(self.module.model, self.module.guide, x,
                                                      num_data=self.num_train, **data)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            changed = [b for b, before in buffers if not torch.equal(b, before)]
        self.ddp = torch.nn.parallel.DistributedDataParallel(
            distributed.DistributedLoss(self.module, self.objective, self.num_train),
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=any(g is None for g in grads), **distributed.buffer_sync(bool(changed)))

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
            "pyro_vae_version": __import__("pyro_vae").__version__,
            "config": self.config.to_dict(),
            "model_state": self.module.state_dict(),
            # pyro.param values of user models; nn.Module parameters ("name$$$...") live in model_state
            "param_store": {k: v for k, v in pyro.get_param_store().get_state()["params"].items() if "$$$" not in k},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch, "step": self.step, "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_elapsed": time.time() - self.epoch_start_time if self.epoch_start_time and self.step else 0.0,
            "history": self.history, "best_val_bound": self.best_val_bound, "best_epoch": self.best_epoch,
            "epochs_since_best": self.epochs_since_best,
            "rng": rng_state(self._own_gpu()),
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
        # checkpoints before the bounds were named kept the objective's bound as best_val_elbo
        self.best_val_bound = ckpt["best_val_bound"] if "best_val_bound" in ckpt else ckpt["best_val_elbo"]
        self.best_epoch = ckpt["best_epoch"]
        self.epochs_since_best = ckpt["epochs_since_best"]
        set_rng_state(ckpt["rng"], self._own_gpu())

    def save_checkpoint(self) -> None:
        if self.rank == 0:   # distributed: rank 0 writes for all (the ranks' parameters are identical)
            atomic_save(self.state_dict(), self.out_dir / CHECKPOINT)

    def _save_best(self) -> None:
        if self.rank != 0:
            return
        atomic_save({"format": FORMAT, "config": self.config.to_dict(), "model_state": self.module.state_dict(),
                     "epoch": self.epoch, "val_bound": self.best_val_bound, "bound": self.bound_name,
                     **self.checkpoint_extra},
                    self.out_dir / BEST)

    def _write_metrics(self) -> None:
        if self.rank != 0:
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
        start, stop = distributed.shard_bounds(x.shape[0], self.rank, self.world_size)
        objectives = [self.objective] + ([] if self.bound_name == "ELBO" else [Trace_ELBO()])
        totals = [0.0] * len(objectives)
        if stop > start:
            for i, objective in enumerate(objectives):
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(seed + self.rank)
                    totals[i] = total_bound(objective, module.model, module.guide, x[start:stop],
                                            self.config.eval_batch_size, num_data=x.shape[0],
                                            **slice_data(data, x.shape[0], start, stop))
        if self.world_size > 1:
            totals = distributed.all_reduce_sum(totals, self.device)
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

    def train_step(self, x: torch.Tensor, **data) -> float:
        """One optimiser step on the minibatch ``x: [B, D]`` (``**data``: its side inputs, e.g. labels
        ``y: [B]``); returns the loss (per full data set)."""
        model, guide = self._programs()
        # Pyro's own checks (model/guide site match, shapes) run on the first step of each fit();
        # once they pass, the program's structure is fixed and re-checking costs ~1 ms per step.
        with pyro.validation_enabled(self._check_next_step):
            loss = self.objective.differentiable_loss(model, guide, x, num_data=self.num_train, **data)
        self._check_next_step = False
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise self._diverged(f"loss became {loss_value} at epoch {self.epoch + 1}, step {self.step + 1} "
                                 f"(of {self.steps_per_epoch})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        self.optimizer.step()
        return loss_value

    def _distributed_step(self, x: torch.Tensor, global_size: int, **data) -> float:
        """One step of rank ``self.rank`` on its share ``x: [b_r, D]`` of a global batch of ``global_size``
        points; returns the global batch's loss (per full data set), the same number on every rank."""
        model, guide = self._programs()
        with pyro.validation_enabled(self._check_next_step and x.shape[0] > 0):
            loss = self.ddp(x, model, guide, **data)     # N / b_r * sum over the share (0 for an empty share)
        self._check_next_step = False
        stop = self._stop_requested or (self.external_stop is not None and self.external_stop())
        # one small all-reduce, overlapped with the backward pass: the share's loss sum (the global batch's
        # sum, for metrics and the NaN check, so that every rank raises together, before any parameter
        # changes) and the stop flag (every rank stops after the same step)
        sums = distributed.start_all_reduce_sum([loss.detach() * (x.shape[0] / self.num_train), float(stop)],
                                                self.device)
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks: weighting rank r by b_r * world / B makes the average the
        # gradient of N / B * (sum over the global batch), as in one process, even for uneven shares
        (loss * (x.shape[0] * self.world_size / global_size)).backward()
        total, stops = sums()
        self._stop_agreed = self._stop_agreed or stops > 0
        loss_value = total * self.num_train / global_size
        if not math.isfinite(loss_value):
            raise self._diverged(f"loss became {loss_value} at epoch {self.epoch + 1}, step {self.step + 1} "
                                 f"(of {self.steps_per_epoch})")
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        self.optimizer.step()
        return loss_value

    def _stopping(self) -> bool:
        return self._stop_agreed if self.world_size > 1 else self._stop_requested

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
        if val_bound > self.best_val_bound:
            self.best_val_bound, self.best_epoch, self.epochs_since_best = val_bound, self.epoch, 0
            self._save_best()
        else:
            self.epochs_since_best += 1
        self.save_checkpoint()
        self._write_metrics()
        return 0 < self.config.patience <= self.epochs_since_best

    def beta_at_epoch_end(self) -> float:
        return warmup_beta_at_epoch_end(self.epoch, self.config.warmup_epochs)

    def fit(self) -> str:
        """Run until ``config.epochs``, early stopping, or a stop request; returns the reason.

        A fresh trainer refuses to start in a folder that already holds a checkpoint (never overwrite a
        run by accident); load it with :meth:`load_state_dict` to continue it.
        """
        if self.epoch == 0 and self.step == 0 and not self.history:   # fresh: never overwrite a run
            check_start(self.config, resume=False)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        total = self.config.epochs * self.steps_per_epoch
        done = min(self.epoch * self.steps_per_epoch + self.step, total)
        bar = tqdm(total=total, initial=done, disable=not self.progress or self.rank != 0, unit="step",
                   dynamic_ncols=True, desc="train", file=SafeStream(sys.stderr))
        # Ctrl-C / SIGTERM: finish the step, save, return (a process of pyro_vae.distributed.launch is stopped
        # by the launcher, which relays the signal to every rank)
        stop_on_signal = StopOnSignal(self.request_stop, active=distributed.worker_context() is None)
        if self.rank > 0:   # rank 0 continues the saved stream; the others draw their own noise
            pyro.set_rng_seed(seed_for(self.config.seed, "rank", self.epoch, self.step, self.rank))
        self._check_next_step = is_validation_enabled()
        # The trainer owns the optimiser over module.parameters(), so the module need not register
        # them in Pyro's param store on every call (see VAE.register_params).
        registering = getattr(self.module, "register_params", None)
        if registering is not None:
            self.module.register_params = False
        with stop_on_signal:
            try:
                if self.history and 0 < self.config.patience <= self.epochs_since_best:
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
                        if self.world_size > 1:
                            mine = distributed.shard(idx, self.rank, self.world_size)
                            data = {k: v[mine] for k, v in self.train_data.items()}
                            loss = self._distributed_step(x_epoch[mine].to(self.device), len(idx), **data)
                        else:
                            data = {k: v[idx] for k, v in self.train_data.items()}
                            loss = self.train_step(x_epoch[idx].to(self.device), **data)
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
                if registering is not None:
                    self.module.register_params = registering
                self.stop_signal = stop_on_signal.received or self.stop_signal


# -- the one function the CLI calls --------------------------------------------------------------------

def _check_resume_config(saved: Dict[str, Any], config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    changed = {k: (saved.get(k), v) for k, v in current.items()
               if saved.get(k) != v and k not in RESUMABLE_CHANGES}
    if saved.get("lr_schedule") == "cosine" and saved.get("epochs") != config.epochs:
        changed["epochs"] = (saved.get("epochs"), config.epochs)   # the cosine schedule is fixed by epochs
    if changed:
        listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"cannot resume {path} with a different config ({listing}); only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change on --resume (epochs not with "
                         f"--lr-schedule cosine, whose schedule ends at the original --epochs)")


def check_start(config: TrainConfig, resume: bool) -> Optional[Dict[str, Any]]:
    """The checkpoint to resume from (None for a fresh run), or a clear error: a resume without a
    checkpoint or with a changed config, a fresh run into a folder that holds one."""
    ckpt_path = Path(config.out) / CHECKPOINT
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume given but there is no checkpoint at {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path)
        _check_resume_config(ckpt["config"], config, ckpt_path)
        return ckpt
    if ckpt_path.exists():   # checked here too, before minutes of data loading
        raise FileExistsError(f"{ckpt_path} already exists: pass --resume to continue that run, "
                              f"or choose another --out")
    return None


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          data: Optional[Dataset] = None, on_step: Optional[Callable] = None,
          figures: bool = True) -> TrainResult:
    """Train a VAE as ``config`` says, writing checkpoints, metrics, config and figures to ``config.out``.

    Args:
        config: the run's :class:`TrainConfig`.
        resume: continue from ``OUT/checkpoint.pt`` (exactly: same parameters, optimizer state, RNG
            and data order as if never stopped).  Without it, an existing checkpoint is an error, so
            a run is never overwritten by accident.
        data: a pre-loaded data set (default: ``load_dataset`` from the config).
        on_step: called as ``on_step(trainer, epoch, step, loss)`` after every step (with
            ``config.devices > 1``: in rank 0's process, so it must be picklable).
        figures: write the PNG figures at the end.

    With ``config.devices > 1`` the run is data-parallel over that many processes
    (:mod:`pyro_vae.distributed`); the result is read back from the run folder.

    Resuming a run that already finished (it reached ``epochs``, or early stopping ended it, under the
    config given now) changes nothing and returns its result (``already_finished=True``).  While training,
    ``OUT/.lock`` keeps a second process from writing the same folder (:func:`~pyro_vae.checkpoint.run_lock`).

    Returns:
        a :class:`TrainResult`; ``result.model`` is the VAE with the *best* validation bound.
    """
    worker = distributed.worker_context()
    if worker is not None:   # a process of pyro_vae.distributed.launch: the launcher holds the folder
        return _train(config, resume, progress, data, on_step, figures, worker)
    ckpt = check_start(config, resume)                  # clear errors before taking the folder
    if ckpt is not None and _finished(ckpt, config) and (Path(config.out) / SUMMARY).exists():
        return _finished_result(config, ckpt)
    with run_lock(config.out):
        if config.devices > 1:
            return distributed.launch(config, resume=resume, progress=progress, data=data, on_step=on_step,
                                      figures=figures)
        return _train(config, resume, progress, data, on_step, figures, None)


def _finished(ckpt: Dict[str, Any], config: TrainConfig) -> bool:
    """Whether the checkpointed run has nothing left to do under ``config`` (its epochs and patience)."""
    return bool(ckpt["history"]) and ckpt["step"] == 0 and (
        ckpt["epoch"] >= config.epochs or 0 < config.patience <= ckpt["epochs_since_best"])


def _finished_result(config: TrainConfig, ckpt: Dict[str, Any]) -> TrainResult:
    out = Path(config.out)
    summary = json.loads((out / SUMMARY).read_text())
    model = load_vae(out / BEST)[0] if (out / BEST).exists() else None
    bound = config_bound_name(config)
    best = ckpt["best_val_bound"] if "best_val_bound" in ckpt else ckpt["best_val_elbo"]
    return TrainResult(model, migrate_history(ckpt["history"], bound), ckpt["best_epoch"], best,
                       summary.get("stop_reason", "completed"), out, bound, already_finished=True)


def _train(config: TrainConfig, resume: bool, progress: bool, data: Optional[Dataset], on_step: Optional[Callable],
           figures: bool, worker) -> TrainResult:
    rank, world = (worker.rank, worker.world_size) if worker is not None else (0, 1)
    out = Path(config.out)
    ckpt = check_start(config, resume)
    device = worker.device if worker is not None else resolve_device(config.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    if data is None:
        data = load_dataset(config.dataset, config.data_dir, config.resolved_binarize(), config.valid_size,
                            config.seed, config.download)
    vae, extra = build_model(config, data, fresh=ckpt is None)
    vae = vae.to(device)
    check_splits(vae, data, config)
    validating = getattr(vae, "validate_inputs", None)
    if validating is not None:
        vae.validate_inputs = False
    trainer = Trainer(vae, data, config, checkpoint_extra=extra, on_step=on_step, progress=progress,
                      rank=rank, world_size=world)
    if config.model and trainer._foreign_params:
        # best.pt and load_vae rebuild the module from its class and state_dict: pyro.param values outside
        # it would come back at their initial values in `evaluate`, `sample` and the summary's test bound
        raise ValueError(f"--model {config.model}: these parameters are pyro.param calls, not parameters of the "
                         f"module: {', '.join(sorted(trainer._foreign_params))}. Make them nn.Parameter (or "
                         f"PyroParam) attributes of the module, so checkpoints can rebuild the model")
    if worker is not None:
        trainer.external_stop = worker.stop_event.is_set
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(config.to_dict(), indent=2) + "\n", out / CONFIG)
    try:
        stop_reason = trainer.fit()
    finally:
        if validating is not None:
            vae.validate_inputs = validating
    if world > 1:
        distributed.barrier(device)   # rank 0 has written best.pt
    best = vae
    if (out / BEST).exists():
        best, _ = load_vae(out / BEST, map_location=str(device))
        best.to(device)
    if stop_reason != "interrupted":
        test_bound, test_elbo = trainer.split_bounds(best, data.test.to(trainer.device),
                                                     seed_for(trainer.config.seed, "test"), **trainer.side_inputs("test"))
        summary = {"bound": trainer.bound_name,                        # early stopping compared this bound
                   "best_epoch": trainer.best_epoch, "best_val_bound": trainer.best_val_bound,
                   "test_bound": test_bound, "test_elbo": test_elbo, "epochs_run": trainer.epoch,
                   "stop_reason": stop_reason, "num_train": trainer.num_train,
                   "seconds": sum(r["seconds"] for r in trainer.history)}
        if rank == 0:
            atomic_write_text(json.dumps(summary, indent=2) + "\n", out / SUMMARY)
        if figures and rank == 0:
            from .plots import plot_training_curves, write_run_figures
            try:
                if isinstance(best, VAE):
                    write_run_figures(best, data, trainer.history, out)
                else:   # a user model: the curves; its own figures are its author's to draw
                    plot_training_curves(trainer.history, out / "curves.png")
            except Exception as e:  # noqa: BLE001 - a figure must never turn a finished run into a failure
                warnings.warn(f"figures skipped: {e}")
    return TrainResult(best, trainer.history, trainer.best_epoch, trainer.best_val_bound, stop_reason, out,
                       trainer.bound_name, trainer.stop_signal)

