"""A run folder's files and the checkpoint format: one writer (:func:`atomic_save`), one reader
(:func:`load_checkpoint`), and the migration of older checkpoints.

A checkpoint is a dict of tensors and plain values (``torch.save``), so it loads with ``weights_only=True``:
loading one never runs code pickled into it.  ``checkpoint.pt`` (the full training state, every epoch and on a
stop) carries ``format = FORMAT``; ``best.pt`` holds the model with the best validation bound.  Every way a
file can fail to load gets its own message, never torch's wording: not a file ``torch.save`` wrote (a
``metrics.jsonl`` passed by mistake), a truncated or damaged one, one holding Python objects that loading
would execute, one written by a newer pyro_vae.  :func:`run_lock` keeps one writer per run folder.
"""
import contextlib
import json
import os
import socket
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from .params import load_user_param_values, user_param_values
from .seeds import rng_state, set_rng_state
from .version import __version__
from .wording import usage_error

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"
FORMAT = "pyro_vae.checkpoint.v1"
_FORMAT_PREFIX = "pyro_vae.checkpoint.v"


def training_checkpoint(*, config: Dict[str, Any], module: Any, optimizer: Any, scheduler: Any,
                        progress: Dict[str, Any], gpu: Optional[torch.device], extra: Dict[str, Any]) -> Dict[str, Any]:
    """``checkpoint.pt``: everything a resume needs: the module's ``state_dict``, the values of ``pyro.param``s
    outside it, the optimiser's and the schedule's state, every random stream (``gpu``: this process's GPU in a
    multi-GPU run), and ``progress``, the trainer's :meth:`~pyro_vae.training.TrainState.to_dict` (epoch, step,
    the epoch's loss so far, history, and the best epoch and patience derived from it, stored for readers of the
    file); ``extra``: what rebuilds the model (``model_kwargs``, or ``user_model`` and its arguments, and the
    data's ``image_shape``)."""
    return {"format": FORMAT, "pyro_vae_version": __version__, "config": config, "model_state": module.state_dict(),
            "param_store": user_param_values(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, **progress,
            "rng": rng_state(gpu), **extra}


def restore_training(ckpt: Dict[str, Any], module: Any, optimizer: Any, scheduler: Any,
                     gpu: Optional[torch.device]) -> None:
    """Load what :func:`training_checkpoint` saved into a run being resumed, in place (an optimiser keeps
    holding the same parameter tensors), random streams included; the trainer reads ``progress`` itself."""
    module.load_state_dict(ckpt["model_state"])
    load_user_param_values(ckpt["param_store"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"], gpu)


def best_checkpoint(*, config: Dict[str, Any], model_state: Dict[str, Any], epoch: int, val_bound: float,
                    bound: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    """``best.pt``: the model of the epoch with the best validation bound ``val_bound`` (named ``bound``)."""
    return {"format": FORMAT, "config": config, "model_state": model_state, "epoch": epoch, "val_bound": val_bound,
            "bound": bound, **extra}


def model_checkpoint(*, config: Optional[Dict[str, Any]], model_state: Dict[str, Any],
                     extra: Dict[str, Any]) -> Dict[str, Any]:
    """A file :func:`pyro_vae.save` writes: a model's ``state_dict`` and what rebuilds it (``extra``: its
    ``module_spec`` and ``image_shape``), with the config of the run that trained it where there is one."""
    return {"format": FORMAT, "pyro_vae_version": __version__, "config": config, "model_state": model_state,
            **extra}


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename: a reader (or a
    crash at any moment) sees either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    """Write a text file (metrics, config, summary) by renaming a finished temporary file over it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def refuse_overwrite(out) -> None:
    """A fresh run must not start in a folder that holds a checkpoint (never overwrite a run by accident)."""
    path = Path(out) / CHECKPOINT
    if path.exists():
        raise usage_error(FileExistsError,
                          f"{path} already exists: continue that run with resume=True (Trainer.fit(resume=True) or "
                          f"pyro_vae.train(config, resume=True)), or choose another folder with TrainConfig(out=...)",
                          f"{path} already exists: pass --resume to continue that run, or choose another --out")


def _why_unreadable(path: Path, error: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":                  # neither torch's zip format nor a legacy pickle
        return "it is not a file torch.save wrote (a checkpoint is checkpoint.pt or best.pt in a run folder)"
    if head == b"PK" and not zipfile.is_zipfile(path):
        return "it is truncated or damaged (an interrupted copy?); the run folder's other checkpoint may load"
    if "weights only" in str(error).lower() or "weights_only" in str(error):
        return ("it holds Python objects beyond tensors and plain values, which loading would execute; refusing "
                "(pyro_vae never writes such a file: load it with torch.load only if you trust its origin)")
    return "it is damaged (torch could not read it)"


def load_checkpoint(path, map_location: str = "cpu") -> Dict[str, Any]:
    """Read a checkpoint file (or a run folder: its ``best.pt``), with a clear error for each way it can fail."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (train writes OUT/{CHECKPOINT} and OUT/{BEST})")
    try:
        # weights_only: a checkpoint is data; loading one must never run code pickled into it
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's many failures, each told apart by _why_unreadable
        raise ValueError(f"{path} is not a readable pyro_vae checkpoint: {_why_unreadable(path, e)}") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise ValueError(f"{path} is not a pyro_vae checkpoint (no model_state: a torch file of something else)")
    written = ckpt.get("format", FORMAT)
    if isinstance(written, str) and written.startswith(_FORMAT_PREFIX) and written != FORMAT:
        try:
            newer = int(written[len(_FORMAT_PREFIX):]) > int(FORMAT[len(_FORMAT_PREFIX):])
        except ValueError:
            newer = True
        if newer:
            raise ValueError(f"{path} was written by a newer pyro_vae (format {written!r}; this version, "
                             f"{__version__}, reads {FORMAT!r}): upgrade pyro_vae to load it")
    return ckpt


def migrate_history(rows: List[Dict[str, Any]], bound: str) -> List[Dict[str, Any]]:
    """History rows as this version writes them (``val_bound``, ``val_bound_name``, ``val_elbo``).  Runs made
    before the bounds were named stored the objective's bound ``bound`` under ``val_elbo``; it moves to
    ``val_bound``, and ``val_elbo`` stays only where that bound was the ELBO."""
    migrated = []
    for row in rows:
        row = dict(row)
        if "val_bound" not in row and "val_elbo" in row:
            row["val_bound"], row["val_bound_name"] = row.pop("val_elbo"), bound
            if bound == "ELBO":
                row["val_elbo"] = row["val_bound"]
        migrated.append(row)
    return migrated


LOCK = ".lock"


class RunFolderLocked(FileExistsError):
    """Another live process is writing this run folder."""


def _holder(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(holder: Dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs (on another machine we cannot tell: assume it does)."""
    if holder.get("host") != socket.gethostname():
        return bool(holder)
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (KeyError, ValueError, TypeError, OSError):
        return False
    return True


@contextlib.contextmanager
def run_lock(out) -> Iterator[None]:
    """Hold ``OUT/.lock`` (this process's PID and host) while training writes the folder: a second
    ``train --out OUT`` meanwhile is refused with :class:`RunFolderLocked` naming the other process; a lock
    left by a run that was killed (its PID is gone) is taken over, with a warning."""
    path = Path(out) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            holder = _holder(path)
            if _alive(holder):
                other = (f"{out} is being written by another pyro-vae process (PID {holder.get('pid')} on "
                         f"{holder.get('host')}, started {holder.get('started')}): wait for it to finish or stop it "
                         f"(Ctrl-C saves a checkpoint), then")
                gone = f"; if that process is gone, delete {path}"
                raise usage_error(RunFolderLocked, f"{other} resume=True{gone}", f"{other} --resume{gone}") from None
            warnings.warn(f"taking over the lock of a run in {out} that is gone (PID {holder.get('pid')})")
            path.unlink(missing_ok=True)
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        yield
    finally:
        if _holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
