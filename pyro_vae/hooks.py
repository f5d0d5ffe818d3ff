"""What happens around the steps of :meth:`pyro_vae.training.Trainer.fit`, one hook per concern: the Ctrl-C and
SIGTERM stop, the checkpoint and the best model, the metrics log, early stopping, progress (a bar on a terminal, one
line per epoch in a log), and a user's per-step callback (TensorBoard is one more, in
:mod:`pyro_vae.tensorboard_hook`).  The trainer calls every hook, in order, at each event (``on_fit_end`` in reverse
order, like leaving nested ``with`` blocks); a hook overrides the events it cares about:

* ``on_fit_start(trainer)``: before :meth:`~pyro_vae.training.Trainer.fit` takes its first step;
* ``on_step_end(trainer, loss)``: after every optimiser step (``trainer.state.step`` already counts it);
* ``on_epoch_end(trainer, row)``: after an epoch's validation; ``row`` is the metrics row just appended to
  ``trainer.state.history``;
* ``stop_reason(trainer)``: asked before the first epoch and after each; a string ends the fit with that reason;
* ``on_fit_end(trainer, reason)``: always; ``reason`` is None when an exception ends the fit;
* ``on_note(trainer, line)``: a line for the user (the step is compiling, compiled, or runs eagerly, and why).

A hook that writes files writes only in the writer process (``trainer.parallel.is_writer``).  A tracker is a
hook of a few lines, passed as ``Trainer(..., hooks=[MyTracker()])``::

    class RecordToList(Hook):
        def __init__(self):
            self.rows = []

        def on_epoch_end(self, trainer, row):
            self.rows.append(dict(row))
"""
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from tqdm.auto import tqdm

from .checkpoint import (BEST, CHECKPOINT, METRICS, atomic_save, atomic_write_text, best_checkpoint,
                         refuse_overwrite)
from .signals import SafeStream, StopOnSignal, say


class Hook:
    """A hook that does nothing at every event: subclass it and override what you need."""

    def on_fit_start(self, trainer: Any) -> None:
        pass

    def on_step_end(self, trainer: Any, loss: float) -> None:
        pass

    def on_epoch_end(self, trainer: Any, row: Dict[str, Any]) -> None:
        pass

    def stop_reason(self, trainer: Any) -> Optional[str]:
        return None

    def on_fit_end(self, trainer: Any, reason: Optional[str]) -> None:
        pass

    def on_note(self, trainer: Any, line: str) -> None:
        pass


class SignalStop(Hook):
    """Ctrl-C (SIGINT) and a scheduler's SIGTERM ask the trainer to stop after the current step (it then saves
    and returns "interrupted"); a second signal aborts.  Only where the process handles signals itself: the
    processes of a data-parallel run hear them from their launcher.  The signal is kept as ``trainer.stop_signal``
    (the CLI exits with 128 + its number)."""

    def on_fit_start(self, trainer: Any) -> None:
        self.handler = StopOnSignal(trainer.request_stop, active=trainer.parallel.handles_signals).__enter__()

    def on_fit_end(self, trainer: Any, reason: Optional[str]) -> None:
        self.handler.__exit__(None, None, None)
        trainer.stop_signal = self.handler.received or trainer.stop_signal


class Checkpointing(Hook):
    """``OUT/checkpoint.pt`` after every epoch and when a stop interrupts the fit; ``OUT/best.pt`` whenever an
    epoch has the best validation bound so far.  A fresh trainer refuses a folder that already holds a checkpoint
    (a run is never overwritten by accident).  Both files are written atomically
    (:func:`~pyro_vae.checkpoint.atomic_save`)."""

    def on_fit_start(self, trainer: Any) -> None:
        if trainer.state.is_fresh:
            refuse_overwrite(trainer.out_dir)
        if trainer.parallel.is_writer:
            trainer.out_dir.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, trainer: Any, row: Dict[str, Any]) -> None:
        if not trainer.parallel.is_writer:
            return
        if trainer.state.best_epoch == row["epoch"]:
            atomic_save(best_checkpoint(config=trainer.config.to_dict(), model_state=trainer.module.state_dict(),
                                        epoch=row["epoch"], val_bound=row["val_bound"], bound=trainer.bound_name,
                                        extra=trainer.checkpoint_extra),
                        trainer.out_dir / BEST)
        atomic_save(trainer.state_dict(), trainer.out_dir / CHECKPOINT)

    def on_fit_end(self, trainer: Any, reason: Optional[str]) -> None:
        if reason == "interrupted" and trainer.parallel.is_writer:
            atomic_save(trainer.state_dict(), trainer.out_dir / CHECKPOINT)


class MetricsLog(Hook):
    """``OUT/metrics.jsonl``: the history, one JSON line per finished epoch, rewritten atomically each epoch."""

    def on_epoch_end(self, trainer: Any, row: Dict[str, Any]) -> None:
        if trainer.parallel.is_writer:
            atomic_write_text("".join(json.dumps(r) + "\n" for r in trainer.state.history),
                              trainer.out_dir / METRICS)


class EarlyStopping(Hook):
    """Stop with "early_stopping" once ``patience`` epochs have passed without a better validation bound
    (``patience`` 0: never)."""

    def __init__(self, patience: int):
        self.patience = patience

    def stop_reason(self, trainer: Any) -> Optional[str]:
        exhausted = 0 < self.patience <= trainer.state.epochs_since_best
        return "early_stopping" if exhausted else None


PROGRESS_MODES = ("auto", "bar", "lines", "off")


def progress_mode(progress: Union[bool, str, None]) -> str:
    """What a ``progress`` argument asks for: ``True`` is "auto" (a bar on a terminal, else one line per epoch),
    ``False``/None "off" (nothing per epoch: for library and test use), or one of :data:`PROGRESS_MODES`."""
    if progress is True:
        return "auto"
    if progress is False or progress is None:
        return "off"
    if progress not in PROGRESS_MODES:
        raise ValueError(f"progress must be True, False or one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
    return progress


def bound_label(name: str) -> str:
    """How a validation bound is named to the user: "ELBO", or "IWAE_5 bound" (never an IWAE bound called ELBO)."""
    return "ELBO" if name == "ELBO" else f"{name} bound"


def epoch_line(row: Dict[str, Any], epochs: int, best_epoch: int, best_val_bound: float) -> str:
    """One plain line for a finished epoch, e.g. ``epoch 3/300  train loss 40.12  validation ELBO -39.87 (best
    -39.87 at epoch 3)  0.8 s``: what a log without a terminal gets instead of a bar."""
    label = bound_label(row.get("val_bound_name", "ELBO"))
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.3f}  validation {label} "
            f"{row['val_bound']:.3f} (best {best_val_bound:.3f} at epoch {best_epoch})  {row['seconds']:.1f} s")


class Progress(Hook):
    """What the user sees per epoch, on stderr, in the writer process; it never fails on a closed terminal or pipe.

    ``mode`` (see :func:`progress_mode`): "bar" is a tqdm bar over the run's steps (with its remaining time and the
    last epoch's loss and validation bound as its postfix); "lines" prints one plain line per epoch
    (:func:`epoch_line`), as Keras and Lightning do in logs; "auto" (``True``) is the bar where stderr is a terminal
    and the lines where it is not (a file, a pipe, a batch job's log: a bar there is carriage-return spam);
    "off" (``False``) prints nothing per epoch, only the notes."""

    def __init__(self, mode: Union[bool, str] = True):
        self.mode = progress_mode(mode)
        self.bar, self.lines = None, False

    def on_fit_start(self, trainer: Any) -> None:
        stream = sys.stderr
        mode = self.mode if trainer.parallel.is_writer else "off"
        if mode == "auto":
            mode = "bar" if _is_terminal(stream) else "lines"
        self.lines, self.bar = mode == "lines", None
        if mode == "bar":
            total = trainer.config.epochs * trainer.steps_per_epoch
            done = min(trainer.state.epoch * trainer.steps_per_epoch + trainer.state.step, total)
            self.bar = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, desc="train",
                            file=SafeStream(stream))

    def on_step_end(self, trainer: Any, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, trainer: Any, row: Dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(epoch=row["epoch"], loss=f"{row['train_loss']:.2f}",
                                 **{f"val_{trainer.bound_name}": f"{row['val_bound']:.2f}"},
                                 best=f"{trainer.state.best_val_bound:.2f}")
        elif self.lines:
            say(epoch_line(row, trainer.config.epochs, trainer.state.best_epoch, trainer.state.best_val_bound))

    def on_fit_end(self, trainer: Any, reason: Optional[str]) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None

    def on_note(self, trainer: Any, line: str) -> None:
        """The line above the bar while it runs (its postfix says "compiling" meanwhile), else on stderr."""
        if not trainer.parallel.is_writer:
            return
        if self.bar is not None:
            if line.startswith("compiling"):
                self._postfix = self.bar.postfix
                self.bar.set_postfix_str("compiling")
            else:                                           # back to the last epoch's figures
                self.bar.set_postfix_str(getattr(self, "_postfix", None) or "")
            self.bar.write(line, file=self.bar.fp)
        else:
            say(line)


def _is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


class StepCallback(Hook):
    """Calls ``fn(trainer, epoch, step, loss)`` after every step (``epoch``: finished epochs; ``step``: steps
    done in the current one, this one included): the ``on_step`` argument of the trainer and ``train``."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def on_step_end(self, trainer: Any, loss: float) -> None:
        self.fn(trainer, trainer.state.epoch, trainer.state.step, loss)


def notify(hooks: Sequence[Hook], trainer: Any, line: str) -> None:
    """Give every hook a line for the user (``on_note``)."""
    for hook in hooks:
        hook.on_note(trainer, line)


def default_hooks(patience: int, progress: Union[bool, str] = True,
                  on_step: Optional[Callable] = None) -> List[Hook]:
    """The hooks every run has: stop on signals, checkpoints, the metrics log, early stopping, progress (``progress``:
    see :class:`Progress`), and ``on_step`` where given."""
    hooks = [SignalStop(), Checkpointing(), MetricsLog(), EarlyStopping(patience), Progress(progress)]
    return hooks + ([StepCallback(on_step)] if on_step is not None else [])
