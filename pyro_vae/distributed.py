"""Data-parallel training over several processes (``pyro-vae train --devices N``), with PyTorch's
``DistributedDataParallel`` around the same model, guide and objective a single process trains.

:func:`launch` (called by :func:`pyro_vae.training.train` when ``config.devices > 1``) starts N processes
with ``torch.multiprocessing`` (start method ``spawn``) that rendezvous on a free TCP port of 127.0.0.1.
Process r uses GPU r with the ``nccl`` backend where CUDA is present and ``--device`` is ``cuda``/``auto``,
else the CPU with ``gloo``.  Each runs the ordinary :func:`~pyro_vae.training.train` path; the
:class:`~pyro_vae.training.Trainer` then:

* takes the contiguous share ``idx.tensor_split(N)[r]`` of every global batch ``idx`` (the batch order of an
  epoch is a function of (seed, epoch) as in one process: no overlap, every point once, the same number of
  steps on every rank, and ``step`` counts global batches, so a run resumes mid-epoch on any process count);
* computes its loss ``objective.differentiable_loss(model, guide, x_r, num_data=N_train)`` through
  :class:`DistributedLoss` wrapped in DDP (rank 0's initial weights are broadcast when it is built) and
  multiplies it by ``b_r * world / B`` before ``backward``: DDP averages gradients over ranks, so the step's
  gradient is exactly that of ``N_train / B * sum over the global batch``, even for an uneven last batch;
* all-reduces one small tensor per step: its share of the loss (for metrics and the NaN check, so all ranks
  stop together) and a stop flag (a stop request on any rank stops every rank after the same step);
* evaluates its contiguous shard of the validation (and test) set with a fixed seed + rank and reduces the
  per-point mean as ``sum of rank sums / N``;
* writes nothing unless it is rank 0 (checkpoints hold rank 0's RNG state; a rank r > 0 reseeds from
  (seed, epoch, step, r) when it starts or resumes).

Only ``nn.Module`` parameters are synchronised: a ``pyro.param`` outside the module is refused
(:func:`require_module_parameters`).  Ctrl-C in the launching process asks every rank to save and return
after the same step; a second Ctrl-C terminates them.  Each CPU process uses cores // N torch threads unless
``OMP_NUM_THREADS`` is set (on many cores fewer can be faster: gloo's communication threads need cores too;
see ``benchmarks/scaling.py``).
"""
import dataclasses
import importlib
import inspect
import logging
import os
import pickle
import signal
import socket
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .signals import STOP_SIGNALS, say


@dataclasses.dataclass
class WorkerContext:
    """What a training process launched by :func:`launch` knows about itself."""
    rank: int
    world_size: int
    device: torch.device
    stop_event: Any          # a multiprocessing Event the launcher sets on Ctrl-C


_WORKER: Optional[WorkerContext] = None


def worker_context() -> Optional[WorkerContext]:
    """The current process's :class:`WorkerContext`, or None outside a process started by :func:`launch`."""
    return _WORKER


# -- pieces the Trainer uses ---------------------------------------------------------------------------

def shard_bounds(num: int, rank: int, world_size: int) -> Tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``num`` items, as ``tensor_split`` cuts them:
    the first ``num % world_size`` ranks get one item more; shares can be empty when ``num < world_size``."""
    base, extra = divmod(num, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous share of a global batch of indices (no overlap, all covered)."""
    return indices.tensor_split(world_size)[rank]


def require_module_parameters(foreign: Sequence[str]) -> None:
    """Refuse parameters that DistributedDataParallel would not synchronise: ``pyro.param``s that are not
    parameters of the trained ``nn.Module`` (``foreign``: their names)."""
    if foreign:
        raise ValueError(
            f"training on several devices (--devices > 1) synchronises only the model's nn.Module parameters, "
            f"but these pyro.param parameters are not in the module and would drift apart between processes: "
            f"{', '.join(sorted(foreign))}. Make them nn.Parameter attributes of the module (or PyroParam "
            f"attributes of a PyroModule), or train with --devices 1")


class DistributedLoss(torch.nn.Module):
    """The module DDP wraps: holds the user's module (so DDP sees and synchronises its parameters) and
    returns the objective's differentiable loss of the batch ``x`` (scaled by ``num_data / len(x)``)."""

    def __init__(self, module: torch.nn.Module, objective, num_data: int):
        super().__init__()
        self.module, self.objective, self.num_data = module, objective, num_data

    def forward(self, x: torch.Tensor, model: Callable, guide: Callable, **data) -> torch.Tensor:
        """``model``/``guide``: the module's programs, possibly wrapped (KL warm-up)."""
        if x.shape[0] == 0:   # an empty share of a short last batch: no loss, but every parameter takes part
            return sum(p.sum() for p in self.module.parameters() if p.requires_grad) * 0.0
        return self.objective.differentiable_loss(model, guide, x, num_data=self.num_data, **data)


def buffer_sync(every_step: bool) -> dict:
    """DistributedDataParallel's argument for syncing buffers from rank 0 before every forward (or only when
    it is built): ``forward_sync_buffers`` where torch has it, else ``broadcast_buffers`` (which, False, also
    skips the sync at construction; every rank builds the same buffers from the same seed anyway)."""
    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers": every_step}


def all_reduce_sum(values: Sequence, device: torch.device) -> List[float]:
    """Sum ``values`` (floats or 0-dim tensors) over all ranks in one float64 all-reduce."""
    return start_all_reduce_sum(values, device)()


def start_all_reduce_sum(values: Sequence, device: torch.device) -> Callable[[], List[float]]:
    """Start summing ``values`` over all ranks (one float64 all-reduce, asynchronous); call the result to wait
    for the sums.  Every rank must start its collectives in the same order."""
    tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    work = dist.all_reduce(tensor, async_op=True)

    def wait() -> List[float]:
        work.wait()
        return tensor.tolist()
    return wait


def barrier(device: torch.device) -> None:
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


# -- the launcher ----------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now (bind to port 0 and let the OS choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def uses_cuda(device: str) -> bool:
    """Whether a run with ``--device device`` puts its processes on GPUs."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def check_devices(config) -> None:
    """Clear errors before any process starts."""
    if uses_cuda(config.device):
        available = torch.cuda.device_count()
        if available < config.devices:
            raise ValueError(f"--devices {config.devices} with --device {config.device} needs one GPU per process, "
                             f"but {available} {'is' if available == 1 else 'are'} visible; use --devices "
                             f"{max(1, available)} or --device cpu")


def launch(config, resume: bool = False, progress: bool = True, data=None, on_step: Optional[Callable] = None,
           figures: bool = True):
    """Train with ``config.devices`` processes and return the :class:`~pyro_vae.training.TrainResult` read back
    from the run folder (``model``: ``best.pt``'s model, or the last checkpoint's before the first epoch ended).

    ``data`` (a pre-loaded data set) is copied to every process (as numpy arrays through the start-up pipe, not
    through shared memory or passed file descriptors); without it every process loads the data set itself.  ``on_step`` runs in rank 0's process, so it must be picklable
    (a module-level function, or an instance of a module-level class).  An error in a process is raised here
    as the same exception type and message where possible.
    """
    from .training import check_start
    world = config.devices
    check_start(config, resume)
    check_devices(config)
    if on_step is not None:
        try:
            pickle.dumps(on_step)
        except Exception as e:  # noqa: BLE001 - any pickling failure means the same thing
            raise ValueError(f"on_step must be picklable to run in the training processes (--devices {world}): "
                             f"a module-level function or an instance of a module-level class ({e})") from None
    if data is None and config.download:   # fetch missing files once, not N times at once into one folder
        from .data import load_dataset
        load_dataset(config.dataset, config.data_dir, config.resolved_binarize(), config.valid_size, config.seed,
                     True)
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    results, stop_event = ctx.SimpleQueue(), ctx.Event()
    processes = mp.start_processes(
        _train_worker, args=(world, free_port(), os.getpid(), config, resume, progress, _to_arrays(data), on_step,
                             figures, results, stop_event),
        nprocs=world, join=False, start_method="spawn")
    interrupts = []

    def on_sigint(signum, frame):
        if interrupts:
            raise KeyboardInterrupt
        interrupts.append(signum)
        stop_event.set()
        say(f"{signal.Signals(signum).name} received: the {world} training processes save a checkpoint after the "
            f"current step (again to abort).")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_sigint) for s in STOP_SIGNALS} if main_thread else {}
    failure = None
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)   # not "Terminating process ... via signal SIGTERM" after an error
    try:
        while not processes.join():
            pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        failure = e
    except BaseException:           # a second Ctrl-C here, or anything else: take the processes down
        for p in processes.processes:
            if p.is_alive():
                p.terminate()
        for p in processes.processes:
            p.join()
        raise
    finally:
        spawn_log.setLevel(level)
        for s, handler in previous.items():
            signal.signal(s, handler)
    messages = []
    while not results.empty():
        messages.append(results.get())
    if failure is not None:
        if interrupts and not any(m[0] == "error" for m in messages):   # a process stopped by the Ctrl-Cs
            raise KeyboardInterrupt from failure
        raise _worker_error(messages, failure) from failure
    done = [m for m in messages if m[0] == "done"]
    if not done:
        if interrupts:
            raise KeyboardInterrupt
        raise RuntimeError(f"the {world} training processes exited without reporting a result")
    return _read_result(config, done[0][2], interrupts[0] if interrupts else None)


def _to_arrays(data):
    """A :class:`~pyro_vae.data.Dataset`'s fields with its tensors as numpy arrays: pickled by value to the
    spawned processes (torch tensors would go through shared memory and file descriptors passed between
    processes, which a small /dev/shm or a low open-file limit breaks)."""
    if data is None:
        return None
    return {f.name: getattr(data, f.name).numpy() if torch.is_tensor(getattr(data, f.name)) else getattr(data, f.name)
            for f in dataclasses.fields(data)}


def _from_arrays(fields):
    if fields is None:
        return None
    from .data import Dataset
    return Dataset(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in fields.items()})


def _read_result(config, stop_reason: str, stop_signal=None):
    from .training import (BEST, CHECKPOINT, TrainResult, config_bound_name, load_checkpoint, load_vae,
                           resolve_device)
    from pathlib import Path
    out = Path(config.out)
    ckpt = load_checkpoint(out / CHECKPOINT)
    device = resolve_device(config.device)
    model, _ = load_vae(out / BEST if (out / BEST).exists() else out / CHECKPOINT, map_location=str(device))
    return TrainResult(model.to(device), list(ckpt["history"]), ckpt["best_epoch"], ckpt["best_val_bound"],
                       stop_reason, out, config_bound_name(config), stop_signal)


def _describe(error: BaseException) -> Tuple[str, str, str]:
    return type(error).__module__, type(error).__qualname__, str(error)


def _worker_error(messages: List[tuple], failure: Exception) -> Exception:
    """The exception to raise in the launcher for a failed process: the original type and message where
    the process reported it and it can be rebuilt, else a RuntimeError saying what happened."""
    errors = {m[1]: m[2] for m in messages if m[0] == "error"}
    rank = getattr(failure, "error_index", None)
    if rank not in errors and errors:
        rank = min(errors)
    if rank not in errors:
        return RuntimeError(f"a training process died without reporting an error ({failure}); "
                            f"see its output above")
    module, qualname, message = errors[rank]
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, Exception):
            error = cls(message)
            if str(error) == message:
                return error
    except Exception:  # noqa: BLE001 - fall back to a RuntimeError below
        pass
    return RuntimeError(f"training process {rank} failed with {qualname}: {message}")


def _on_worker_sigint(parent_pid: int):
    """Ctrl-C in a terminal (or a scheduler's SIGTERM to the job's processes) reaches every process; the launcher
    relays it as a stop request, so a worker ignores it, unless its parent is gone (torch's spawn sends SIGINT to
    orphans): then it exits."""
    def handler(signum, frame):
        if os.getppid() != parent_pid:
            raise KeyboardInterrupt
    return handler


def _train_worker(rank: int, world: int, port: int, parent_pid: int, config, resume: bool, progress: bool,
                  data, on_step, figures: bool, results, stop_event) -> None:
    """One training process: join the process group, run :func:`~pyro_vae.training.train`, report to the
    launcher (rank 0: the stop reason; any rank: its error)."""
    global _WORKER
    for s in STOP_SIGNALS:
        signal.signal(s, _on_worker_sigint(parent_pid))
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    if not os.environ.get("OMP_NUM_THREADS"):   # N processes must not oversubscribe the cores (unless told)
        torch.set_num_threads(max(1, available_cpus() // world))
    try:
        if uses_cuda(config.device):
            device, backend = torch.device("cuda", rank), "nccl"
            torch.cuda.set_device(device)
        else:
            device, backend = torch.device("cpu"), "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
        _WORKER = WorkerContext(rank, world, device, stop_event)
        from .training import train
        result = train(config, resume=resume, progress=progress and rank == 0, data=_from_arrays(data),
                       on_step=on_step if rank == 0 else None, figures=figures)
        if rank == 0:
            results.put(("done", rank, result.stop_reason))
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        results.put(("error", rank, _describe(e)))
        raise
    finally:
        _WORKER = None
        if dist.is_initialized():
            dist.destroy_process_group()
