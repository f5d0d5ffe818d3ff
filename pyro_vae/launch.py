"""The function the CLI calls, :func:`train`: it holds the run folder and trains in this process or in N
data-parallel processes (``pyro-vae train --devices N``), with PyTorch's ``DistributedDataParallel`` around the
same model, guide and objective a single process trains (:mod:`pyro_vae.parallel`).

:func:`launch` starts N processes with ``torch.multiprocessing`` (start method ``spawn``) that rendezvous on a
free TCP port of 127.0.0.1.  Process r uses GPU r with the ``nccl`` backend where CUDA is present and ``--device``
is ``cuda``/``auto``, else the CPU with ``gloo``.  Each runs :func:`pyro_vae.run.run` with its
:class:`~pyro_vae.parallel.DDPGroup` (how a step is shared is documented there): only rank 0 writes, and a rank
r > 0 reseeds from (seed, epoch, step, r) when it starts or resumes.

Only ``nn.Module`` parameters are synchronised: a ``pyro.param`` outside the module is refused
(:func:`pyro_vae.parallel.require_module_parameters`).  Ctrl-C or SIGTERM in the launching process asks every
rank to save and return after the same step; a second one terminates them.  Each CPU process uses cores // N torch threads unless
``OMP_NUM_THREADS`` is set (on many cores fewer can be faster: gloo's communication threads need cores too;
see ``benchmarks/scaling.py``).
"""
import dataclasses
import gc
import importlib
import logging
import os
import pickle
import signal
import socket
import threading
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import BEST, CHECKPOINT, SUMMARY, load_checkpoint, run_lock
from .config import TrainConfig
from .data import Dataset
from .devices import resolve_device
from .factory import config_bound_name, config_dataset, load_vae
from .parallel import DDPGroup
from .run import TrainResult, check_start, finished, finished_result, run
from .signals import STOP_SIGNALS, say
from .tensorboard_hook import require_tensorboard
from .wording import usage_error


def train(config: TrainConfig, resume: bool = False, progress: Union[bool, str] = True,
          data: Optional[Dataset] = None, on_step: Optional[Callable] = None,
          figures: bool = True, model: Optional[torch.nn.Module] = None) -> TrainResult:
    """Train a VAE as ``config`` says, writing checkpoints, metrics, config, ``summary.json`` (with the test
    bounds) and figures to ``config.out``: everything ``pyro-vae train`` does, which calls it.

    Args:
        config: the run's :class:`TrainConfig`.
        resume: continue from ``OUT/checkpoint.pt`` (exactly: same parameters, optimizer state, RNG
            and data order as if never stopped).  Without it, an existing checkpoint is an error, so
            a run is never overwritten by accident.
        progress: True: a progress bar where stderr is a terminal, one line per epoch where it is not (a log);
            "lines": a line per epoch always; "bar": the bar always; False: nothing per epoch
            (:class:`~pyro_vae.hooks.Progress`).
        data: a pre-loaded data set (default: the config's, :func:`~pyro_vae.factory.config_dataset`).
        on_step: called as ``on_step(trainer, epoch, step, loss)`` after every step (with
            ``config.devices > 1``: in rank 0's process, so it must be picklable).
        figures: write the PNG figures at the end.
        model: a model declared in Python (any module on the contract of :mod:`pyro_vae.contract`), trained in
            place of the one the config's model settings describe; in this process only (``config.devices``
            1).  Its checkpoints store its spec where it has one, so :func:`pyro_vae.load` reads the run.

    With ``config.devices > 1`` the run is data-parallel over that many processes (:func:`launch`); the
    result is read back from the run folder.

    Resuming a run that already finished (it reached ``epochs``, or early stopping ended it, under the
    config given now) changes nothing and returns its result (``already_finished=True``).  While training,
    ``OUT/.lock`` keeps a second process from writing the same folder (:func:`~pyro_vae.checkpoint.run_lock`).

    Returns:
        a :class:`TrainResult`; ``result.model`` is the VAE with the *best* validation bound.
    """
    if model is not None and config.devices > 1:
        raise ValueError(f"train(config, model=...) trains in this process; for devices={config.devices} name the "
                         f"model's class in the config instead (TrainConfig(model='package.module:Class'))")
    ckpt = check_start(config, resume)                  # clear errors before taking the folder
    if config.tensorboard:
        require_tensorboard()                           # and before any process starts
    if ckpt is not None and finished(ckpt, config) and (Path(config.out) / SUMMARY).exists():
        return finished_result(config, ckpt, model)
    with run_lock(config.out):
        if config.devices > 1:
            return launch(config, resume=resume, progress=progress, data=data, on_step=on_step, figures=figures)
        return run(config, None, resume=resume, progress=progress, data=data, on_step=on_step, figures=figures,
                   model=model)


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
            visible = f"one GPU per process, but {available} {'is' if available == 1 else 'are'} visible"
            raise usage_error(ValueError, f"devices={config.devices} with device={config.device!r} needs {visible}; use "
                                          f"devices={max(1, available)} or device='cpu'",
                              f"--devices {config.devices} with --device {config.device} needs {visible}; use "
                              f"--devices {max(1, available)} or --device cpu")


def launch(config, resume: bool = False, progress: Union[bool, str] = True, data=None,
           on_step: Optional[Callable] = None, figures: bool = True):
    """Train with ``config.devices`` processes and return the :class:`~pyro_vae.run.TrainResult` read back
    from the run folder (``model``: ``best.pt``'s model, or the last checkpoint's before the first epoch ended).

    ``data`` (a pre-loaded data set) is copied to every process (as numpy arrays through the start-up pipe, not
    through shared memory or passed file descriptors); without it every process loads the data set itself.  ``on_step`` runs in rank 0's process, so it must be picklable
    (a module-level function, or an instance of a module-level class).  An error in a process is raised here
    as the same exception type and message where possible.
    """
    world = config.devices
    check_start(config, resume)
    check_devices(config)
    if on_step is not None:
        try:
            pickle.dumps(on_step)
        except Exception as e:  # noqa: BLE001 - any pickling failure means the same thing
            raise ValueError(f"on_step must be picklable to run in the {world} training processes: "
                             f"a module-level function or an instance of a module-level class ({e})") from None
    if data is None and config.download:   # fetch missing files once, not N times at once into one folder
        config_dataset(config, download=True)
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
    failure = _teardown_failure(messages, failure, world)
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
    return Dataset(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in fields.items()})


def _read_result(config, stop_reason: str, stop_signal=None):
    out = Path(config.out)
    ckpt = load_checkpoint(out / CHECKPOINT)
    device = resolve_device(config.device)
    model, _ = load_vae(out / BEST if (out / BEST).exists() else out / CHECKPOINT, map_location=str(device))
    return TrainResult(model.to(device), list(ckpt["history"]), ckpt["best_epoch"], ckpt["best_val_bound"],
                       stop_reason, out, config_bound_name(config), stop_signal)


def _describe(error: BaseException) -> Tuple[str, str, str, Optional[str]]:
    """What a process sends of its error: the type's module and name, the message, the command line's wording."""
    return type(error).__module__, type(error).__qualname__, str(error), getattr(error, "cli_message", None)


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
    module, qualname, message, cli = errors[rank]
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, Exception):
            error = cls(message)
            if str(error) == message:
                return usage_error(cls, message, cli) if cli else error
    except Exception:  # noqa: BLE001 - fall back to a RuntimeError below
        pass
    where = f"training process {rank} failed with {qualname}: "
    return usage_error(RuntimeError, where + message, where + cli) if cli else RuntimeError(where + message)


def _teardown_failure(messages: List[tuple], failure: Optional[Exception], world: int) -> Optional[Exception]:
    """``failure``, unless every process had reported its work finished (past the last barrier, so the run
    folder is complete) before one died: then a warning, not an error.  A gloo process can abort while it
    exits ("terminate called without an active exception": its C++ threads torn down with the interpreter),
    which must not turn a finished run into a failed one."""
    finished_ranks = {m[1] for m in messages if m[0] == "finished"}
    if failure is None or len(finished_ranks) < world or any(m[0] == "error" for m in messages):
        return failure
    warnings.warn(f"a training process died while exiting, after every process had finished its work ({failure}); "
                  f"the run's outputs are complete")
    return None


def _on_worker_sigint(parent_pid: int):
    """Ctrl-C in a terminal (or a scheduler's SIGTERM to the job's processes) reaches every process; the launcher
    relays it as a stop request, so a worker ignores it, unless its parent is gone (torch's spawn sends SIGINT to
    orphans): then it exits."""
    def handler(signum, frame):
        if os.getppid() != parent_pid:
            raise KeyboardInterrupt
    return handler


def _train_worker(rank: int, world: int, port: int, parent_pid: int, config, resume: bool, progress,
                  data, on_step, figures: bool, results, stop_event) -> None:
    """One training process: join the process group and run :func:`~pyro_vae.run.run` with its
    :class:`~pyro_vae.parallel.DDPGroup`; report to the launcher (rank 0: the stop reason; any rank: its error)."""
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
        result = run(config, DDPGroup(rank, world, device, stop_event), resume=resume,
                     progress=progress if rank == 0 else False, data=_from_arrays(data),
                     on_step=on_step if rank == 0 else None, figures=figures)
        if rank == 0:
            results.put(("done", rank, result.stop_reason))
        del result
        dist.barrier()   # every rank's work (and rank 0's writing) is over: none closes its sockets mid-collective
        results.put(("finished", rank, None))
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        results.put(("error", rank, _describe(e)))
        raise
    finally:
        gc.collect()   # DistributedDataParallel's reducer holds the group: let it go while Python is whole
        if dist.is_initialized():
            dist.destroy_process_group()
