"""TensorBoard logging of a run (``pyro-vae train --tensorboard``, ``TrainConfig(tensorboard=True)``, or
``Trainer(..., hooks=[TensorBoardLogger(folder)])``): one :class:`~pyro_vae.hooks.Hook` writing through
``torch.utils.tensorboard.SummaryWriter`` into ``OUT/tensorboard/``, in the writer process only.  It needs the
optional extra ``pip install 'pyro_vae[tensorboard]'``; without it, building the hook (before any training) is a
:class:`TensorBoardMissing` error that says so.  See the run with ``tensorboard --logdir OUT/tensorboard``.

What it writes, with the finished epoch as the step:

* per epoch, the scalars ``train/loss`` (the per-datapoint loss minimised: beta-weighted under KL warm-up),
  ``val/<bound>`` (the validation bound under its own name: ``val/ELBO``, ``val/IWAE_5_bound``, ...; an IWAE bound
  is never called ELBO), ``val/ELBO`` beside another bound, ``train/lr``, ``train/beta`` and ``time/epoch_seconds``;
* at the first epoch, every ``images_every`` epochs and at the last, the image grids ``images/reconstructions``
  (pairs of rows: validation inputs above ``model.reconstruct``'s means) and ``images/samples``
  (``model.sample``'s means of fixed prior draws), for image data and models that have both methods (one note says
  why they are skipped otherwise);
* when the fit ends (not when it is interrupted), the hparams tab: the run's settings (those a resume cannot change)
  with its final metrics (``hparams/best_val_<bound>``, ``hparams/best_epoch``, ``hparams/epochs_run``, ... and,
  from :func:`pyro_vae.run.run`, the test bounds), in the same event stream.

A resumed run continues the same stream: the writer purges steps after the checkpoint's epoch (``purge_step``)
and each epoch is written once, when it ends, after its checkpoint, so no step is written twice.
"""
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .config import RESUMABLE_CHANGES
from .contract import eval_mode, state_preserved
from .data import chw, evaluation_indices
from .hooks import Hook, bound_label, notify

INSTALL = "pip install 'pyro_vae[tensorboard]'"
LOG_DIR = "tensorboard"           # inside the run folder
# left out of the hparams tab: the settings a resume may change (where the run is, how it is logged, epochs,
# patience, ...). TensorBoard keeps the first session info of a run, so what a continued run writes again must be
# what it wrote before; how long the run trained is a metric (hparams/epochs_run) instead
NOT_HPARAMS = RESUMABLE_CHANGES

__all__ = ["TensorBoardLogger", "TensorBoardMissing", "require_tensorboard", "bound_tag", "INSTALL", "LOG_DIR"]


class TensorBoardMissing(ImportError):
    """TensorBoard logging was asked for, but the ``tensorboard`` package is not installed."""


def require_tensorboard() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a :class:`TensorBoardMissing` error that says how to install
    the package (torch imports ``tensorboard`` only when it is asked for)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TensorBoardMissing(f"TensorBoard logging (--tensorboard, TrainConfig(tensorboard=True)) needs the "
                                 f"tensorboard package, which is not installed ({e}); install it with: "
                                 f"{INSTALL}") from e
    return SummaryWriter


def bound_tag(name: str) -> str:
    """A bound's name in a tag: "ELBO", or "IWAE_5_bound" for ``IWAE_5`` (:func:`~pyro_vae.hooks.bound_label`)."""
    return bound_label(name).replace(" ", "_")


def hparam_values(config: Dict[str, Any]) -> Dict[str, Any]:
    """A config's settings as the hparams plugin takes them: numbers, booleans and strings as they are, lists and
    tables as JSON text, None left out; those a resume may change (:data:`NOT_HPARAMS`) left out."""
    values = {}
    for key, value in config.items():
        if key in NOT_HPARAMS or value is None:
            continue
        values[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return values


def upscaled(images: torch.Tensor, min_size: int = 28) -> torch.Tensor:
    """``[N, C, H, W]`` images repeated pixel by pixel until the longer side is at least ``min_size`` (8x8 digits
    would be specks in TensorBoard's image panel)."""
    factor = max(1, math.ceil(min_size / max(images.shape[-2:])))
    return images.repeat_interleave(factor, -2).repeat_interleave(factor, -1) if factor > 1 else images


def image_grid(rows: torch.Tensor, image_shape: Any, per_row: int) -> torch.Tensor:
    """``[N, D]`` images in ``[0, 1]`` (clipped) as one ``[3, H', W']`` grid of ``per_row`` images a row."""
    from torchvision.utils import make_grid
    c, h, w = chw(image_shape)
    images = rows.detach().float().cpu().clamp(0.0, 1.0).reshape(-1, c, h, w)
    return make_grid(upscaled(images), nrow=per_row, padding=2, pad_value=0.5)


class TensorBoardLogger(Hook):
    """Writes a run's scalars, image grids and hparams to TensorBoard (see the module docstring).

    Args:
        log_dir: the event files' folder (``OUT/tensorboard`` for a run).
        images_every: image grids at the first epoch, every this many epochs and at the last.
        num_images: validation inputs reconstructed and prior samples drawn (rows of at most 10).
        hparams_at_fit_end: write the hparams tab when the fit ends; False when the caller adds metrics known only
            later (the test bounds) with :meth:`write_hparams` itself, as :func:`pyro_vae.run.run` does.
    """

    def __init__(self, log_dir: Any, images_every: int = 10, num_images: int = 20, hparams_at_fit_end: bool = True):
        self.summary_writer = require_tensorboard()          # before any training: a missing package fails first
        if images_every < 1:
            raise ValueError(f"images_every must be >= 1, got {images_every}")
        self.log_dir, self.images_every, self.num_images = Path(log_dir), images_every, num_images
        self.hparams_at_fit_end = hparams_at_fit_end
        self.writer, self.images_skipped, self.last_images = None, None, 0

    @classmethod
    def for_config(cls, config: Any, **kwargs: Any) -> "TensorBoardLogger":
        """The logger a run's config asks for: ``OUT/tensorboard``, images every ``tensorboard_images_every``."""
        return cls(Path(config.out) / LOG_DIR, config.tensorboard_images_every, **kwargs)

    def _open(self, purge_step: Optional[int] = None) -> Any:
        if self.writer is None:
            self.writer = self.summary_writer(str(self.log_dir), purge_step=purge_step)
        return self.writer

    def close(self) -> None:
        """Flush and close the event file (a later write opens a new one in the same folder)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_fit_start(self, trainer: Any) -> None:
        if not trainer.parallel.is_writer:
            return
        # a resumed run: steps after the checkpoint's epoch, if an earlier process wrote any, are dropped
        self._open(purge_step=None if trainer.state.is_fresh else trainer.state.epoch + 1)
        self.last_images = trainer.state.epoch if not trainer.state.is_fresh else 0
        module = trainer.module
        if trainer.data.image_shape is None:
            self.images_skipped = "the data have no image shape"
        elif not (callable(getattr(module, "reconstruct", None)) and callable(getattr(module, "sample", None))):
            self.images_skipped = f"{type(module).__name__} has no reconstruct() and sample() methods"
        if self.images_skipped:
            notify(trainer.hooks, trainer, f"tensorboard: no image grids ({self.images_skipped})")

    def on_epoch_end(self, trainer: Any, row: Dict[str, Any]) -> None:
        if self.writer is None:
            return
        step, name = row["epoch"], row.get("val_bound_name", trainer.bound_name)
        scalars = {"train/loss": row["train_loss"], f"val/{bound_tag(name)}": row["val_bound"],
                   "train/lr": row.get("lr"), "train/beta": row.get("beta"), "time/epoch_seconds": row.get("seconds")}
        if name != "ELBO":
            scalars["val/ELBO"] = row.get("val_elbo")
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        if step == 1 or step % self.images_every == 0:
            self.write_images(trainer, step)
        self.writer.flush()

    def write_images(self, trainer: Any, step: int) -> None:
        """The reconstruction and sample grids at ``step``, drawn without touching the training's random streams
        or the model's mode; a model whose methods fail is skipped from then on, with one note."""
        if self.writer is None or self.images_skipped:
            return
        module, n = trainer.module, min(self.num_images, len(trainer.valid))
        per_row = min(10, n)
        n -= n % per_row
        rows = evaluation_indices(len(trainer.valid), n).to(trainer.valid.device)   # spread: a split may be sorted
        x = trainer.valid[rows]
        side = {key: value[rows] for key, value in trainer.valid_data.items()}   # e.g. the labels of a conditional model
        try:
            with state_preserved(module, trainer.device), eval_mode(module), torch.no_grad():
                torch.manual_seed(0)                                         # the same prior draws at every step
                recon = module.reconstruct(x, **side)
                samples = module.sample(n, **side)
            pairs = torch.cat([torch.stack([x[i:i + per_row], recon[i:i + per_row]]) for i in range(0, n, per_row)])
            shape = trainer.data.image_shape
            self.writer.add_image("images/reconstructions", image_grid(pairs.reshape(-1, x.shape[1]), shape, per_row),
                                  step)
            self.writer.add_image("images/samples", image_grid(samples, shape, per_row), step)
            self.last_images = step
        except Exception as e:  # noqa: BLE001 - a picture must never end a run
            self.images_skipped = f"{type(e).__name__}: {e}"
            notify(trainer.hooks, trainer, f"tensorboard: image grids skipped from now on ({self.images_skipped})")

    def write_hparams(self, trainer: Any, metrics: Optional[Dict[str, float]] = None) -> None:
        """The hparams tab: the config's settings (:func:`hparam_values`) with the best validation bound, its
        epoch, the epochs run, the last training loss and ``metrics`` (tags under ``hparams/``), into the same
        event stream, the metrics at the last epoch's step (so a run continued later adds, never repeats, a step);
        the file is closed afterwards."""
        from torch.utils.tensorboard.summary import hparams
        state = trainer.state
        if not state.history or not trainer.parallel.is_writer:
            return
        values = {f"best_val_{bound_tag(trainer.bound_name)}": state.best_val_bound, "best_epoch": state.best_epoch,
                  "epochs_run": state.epoch, "final_train_loss": state.history[-1]["train_loss"], **(metrics or {})}
        values = {f"hparams/{key}": float(value) for key, value in values.items()}
        writer = self._open()
        for summary in hparams(hparam_values(trainer.config.to_dict()), values):
            writer.file_writer.add_summary(summary, state.epoch)
        for tag, value in values.items():
            writer.add_scalar(tag, value, state.epoch)
        self.close()

    def on_fit_end(self, trainer: Any, reason: Optional[str]) -> None:
        if self.writer is not None and reason is not None and reason != "interrupted":
            if self.last_images != trainer.state.epoch:
                self.write_images(trainer, trainer.state.epoch)      # the last epoch's pictures
            if self.hparams_at_fit_end:
                self.write_hparams(trainer)
        self.close()
