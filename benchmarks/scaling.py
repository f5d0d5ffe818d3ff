"""Training samples per second on 1 and N data-parallel processes (``train --devices N``), measured in one run.

Setting: the 784-400-20 MLP VAE of ``benchmarks/train_step.py`` (Bernoulli likelihood, ``Trace_ELBO``,
global batch 128, fused Adam) on statically binarized Fashion-MNIST where Debian's dataset-fashion-mnist
package is installed (/usr/share/datasets/fashion-mnist), else the default digits VAE (64-256-256-8,
batch 100), whose 1257 training rows are repeated to fill the steps (digits alone make 13 batches).  Every run
trains one epoch of ``--steps`` global batches through :func:`pyro_vae.launch.train`,
the path ``pyro-vae train`` takes, with the same config, seed and global batch; only the number of processes
changes.  A picklable ``on_step`` clock in rank 0's process stamps every step; the rate is (steps after the
first ``--warmup`` ones) x batch / their wall time, so process start-up, imports, validation and checkpoints
are not counted.  The configurations are timed in interleaved rounds (1 N N 1 ...), each reported number is
the median over rounds, and the ratio is against 1 process.

Each of N processes gets cores // N torch threads (1 process: torch's default; set OMP_NUM_THREADS to choose);
on the project's 2-core VM that is 2 threads for 1 process against 1 thread each for 2 processes, plus one
all-reduce of the gradients (2.6 MB here, over TCP on 127.0.0.1) and one of the loss per step, so expect no
gain there: the point is that it runs and that the training loss matches (the processes draw their own
noise, so the losses agree to sampling error, not exactly).  It is meant for several GPUs (one per process,
nccl), where a step's compute is large against the all-reduce (not measured: no multi-GPU machine here):

    python benchmarks/scaling.py [--devices 1,2] [--steps 200] [--rounds 2] [--device cpu] [--data-dir DIR]
                                 [--batch-size B] [--hidden 400]
    python benchmarks/scaling.py --devices 1,2,4 --device cuda --steps 400      # needs 4 GPUs
"""
import argparse
import dataclasses
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pyro_vae.data import DataError, load_dataset
from pyro_vae.devices import resolve_device
from pyro_vae.launch import available_cpus, check_devices, train
from pyro_vae.training import TrainConfig
from pyro_vae.wording import cli_message


class StepClock:
    """``on_step`` that stamps every step and, after the epoch's last one, writes the stamps to ``path``
    (it runs in rank 0's process, so it reports through a file)."""

    def __init__(self, path: str):
        self.path, self.stamps, self.losses = path, [], []

    def __call__(self, trainer, epoch, step, loss):
        self.stamps.append(time.perf_counter())
        self.losses.append(loss)
        if step == trainer.steps_per_epoch:
            Path(self.path).write_text(json.dumps({"stamps": self.stamps, "losses": self.losses,
                                                   "threads": torch.get_num_threads(),
                                                   "world": trainer.parallel.world_size}))


def setting(steps: int, data_dir=None, batch_size=None):
    """The data (training split cut, or repeated, to ``steps`` full global batches) and the config without
    devices/out."""
    try:
        data = load_dataset("fashion-mnist", data_dir, binarize="static")
        name = "Fashion-MNIST (Debian package), statically binarized, 784-400-20 VAE"
        config = dict(hidden=(400,), latent_dim=20, batch_size=128, data_dir=data_dir)
    except DataError:
        data = load_dataset("digits", binarize="static")
        name = "digits (Fashion-MNIST not installed), statically binarized, 64-256-256-8 VAE"
        config = dict(batch_size=100)
    if batch_size:
        config["batch_size"] = batch_size
    n = steps * config["batch_size"]
    if len(data.train) < n:                  # digits: its rows again, so the epoch has the steps asked for
        name += f", its {len(data.train)} training rows repeated to fill {steps} batches"
        data = dataclasses.replace(data, train=data.train.repeat(math.ceil(n / len(data.train)), 1))
    data = dataclasses.replace(data, train=data.train[:n], train_labels=None, valid=data.valid[:1000],
                               valid_labels=None, test=data.test[:1000], test_labels=None)
    return data, name, dict(config, loss="elbo", epochs=1, patience=0, seed=0)


def measure(devices: int, device: str, data, config: dict, warmup: int, scratch: Path):
    out = scratch / f"run-{devices}-{time.monotonic_ns()}"
    clock_file = scratch / f"clock-{devices}-{time.monotonic_ns()}.json"
    result = train(TrainConfig(**config, devices=devices, device=device, out=str(out)), progress=False, data=data,
                   on_step=StepClock(str(clock_file)), figures=False)
    clock = json.loads(clock_file.read_text())
    stamps = clock["stamps"][warmup:]
    rate = (len(stamps) - 1) * config["batch_size"] / (stamps[-1] - stamps[0])
    return rate, result.history[0]["train_loss"], result.history[0]["val_elbo"], clock["threads"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="1,2", help="comma-separated process counts (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for one GPU per process")
    parser.add_argument("--steps", type=int, default=200, help="global batches per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps not timed (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: 128, digits 100)")
    parser.add_argument("--hidden", default=None, help="hidden layer sizes, e.g. 1024,1024 (default: the setting's)")
    parser.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST's IDX files, if not where "
                                                         "Debian's package puts them")
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.devices.split(",")]
    except ValueError:
        parser.error(f"--devices takes comma-separated process counts such as 1,2, got {args.devices!r}")
    if args.warmup + 2 > args.steps:
        parser.error("--steps must exceed --warmup by at least 2")
    try:                                     # no GPU, too few GPUs, a bad name: one line, not a traceback
        resolve_device(args.device)
        for n in counts:
            check_devices(TrainConfig(device=args.device, devices=n, batch_size=max(n, 100)))
    except ValueError as e:
        parser.error(cli_message(e))
    data, name, config = setting(args.steps, args.data_dir, args.batch_size)
    steps = math.ceil(len(data.train) / config["batch_size"])     # what one epoch of this data takes
    if args.hidden:
        config["hidden"] = tuple(int(h) for h in args.hidden.split(","))
        name = f"{name.rsplit(',', 1)[0]}, hidden layers {args.hidden} (not the default)"
    rates = {n: [] for n in counts}
    losses = {n: [] for n in counts}
    threads = {}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for n in (counts if r % 2 == 0 else counts[::-1]):
                rate, loss, val, threads[n] = measure(n, args.device, data, config, args.warmup, Path(scratch))
                rates[n].append(rate)
                losses[n].append((loss, val))
                print(f"  round {r + 1}: {n} process(es): {rate:8.0f} samples/s, epoch train loss {loss:.3f}, "
                      f"val ELBO {val:.3f}", flush=True)
    print(f"pyro_vae data-parallel scaling: {name}, global batch {config['batch_size']}, "
          f"{len(data.train)} training points: {steps} steps per run, the first {args.warmup} not timed, "
          f"the rate over the {steps - args.warmup - 1} step intervals after them")
    print(f"device {args.device}; torch {torch.__version__}, {available_cpus()} cores, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}; "
          f"{args.rounds} interleaved rounds, median")
    base = statistics.median(rates[counts[0]])
    for n in counts:
        med = statistics.median(rates[n])
        loss = statistics.median(l for l, _ in losses[n])
        val = statistics.median(v for _, v in losses[n])
        print(f"  {n} process(es) x {threads[n]} thread(s): {med:8.0f} samples/s "
              f"({min(rates[n]):.0f}-{max(rates[n]):.0f})  ratio {med / base:.3f}  "
              f"epoch train loss {loss:.3f}  val ELBO {val:.3f}")
    if len(counts) > 1:
        print(f"RATIO {counts[-1]} processes / {counts[0]} = {statistics.median(rates[counts[-1]]) / base:.3f}")


if __name__ == "__main__":
    main()
