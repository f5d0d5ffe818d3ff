"""How long the README's heavy commands take on this machine, for the README's table of times.

Each command runs as the README shows it, on MNIST (the IDX files under ``--data-dir``; Fashion-MNIST has the
same size and shapes, so its times are the same), but scaled down by a stated factor where the full command
would take many minutes: fewer points, samples or annealing steps, all of which the cost is linear in.  The
scaled time is ``start-up + (measured - start-up) x factor``, where start-up (imports, data, model) is timed
by the same command at a negligible size.  Training is timed by its own metrics log (seconds of epoch 1).

    python benchmarks/command_times.py --data-dir ../shared/data [--out benchmarks/out/times]

About 10 minutes on 2 CPU cores, most of it one epoch of the convolutional network.  Prints a Markdown table.
"""
import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


def pyro_vae(*args: str) -> float:
    """Seconds of ``pyro-vae ARGS`` (the installed console script of this interpreter's environment)."""
    command = [str(Path(sys.executable).with_name("pyro-vae")), *args, "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def epoch_seconds(run: Path) -> float:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["seconds"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST's IDX files (or mnist/)")
    parser.add_argument("--out", default="benchmarks/out/times", help="scratch folder (emptied first)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = ["--dataset", "mnist", "--data-dir", args.data_dir]
    rows = []

    mlp, conv = out / "mlp", out / "conv"
    pyro_vae("train", *data, "--binarize", "dynamic", "--hidden", "400,400", "--latent-dim", "40", "--loss",
             "meanfield", "--epochs", "1", "--batch-size", "128", "--no-figures", "--out", str(mlp))
    rows.append(("`pyro-vae train` 784-400-400-40 MLP, `--loss meanfield`, batch 128", "one epoch (60k images)",
                 epoch_seconds(mlp)))
    pyro_vae("train", *data, "--binarize", "none", "--likelihood", "continuous-bernoulli", "--network", "conv",
             "--epochs", "1", "--no-figures", "--out", str(conv))
    rows.append(("`pyro-vae train --network conv --likelihood continuous-bernoulli`", "one epoch (60k images)",
                 epoch_seconds(conv)))

    def scaled(label: str, size: str, factor: float, small, tiny) -> None:
        start_up = pyro_vae(*tiny)
        measured = pyro_vae(*small)
        rows.append((label, size, start_up + (measured - start_up) * factor))

    run = str(mlp)
    scaled("`pyro-vae evaluate RUN --num-samples 5000`", "all 10,000 test points (timed on 500)", 20,
           ["evaluate", run, "--num-samples", "5000", "--num", "500", "--out", str(out / "is")],
           ["evaluate", run, "--num-samples", "1", "--num", "100", "--out", str(out / "is0")])
    scaled("`pyro-vae evaluate RUN --method ais --ais-steps 1000 --chains 16 --num 100`",
           "100 points (timed at 50 steps)", 20,
           ["evaluate", run, "--method", "ais", "--ais-steps", "50", "--num", "100", "--out", str(out / "ais")],
           ["evaluate", run, "--method", "ais", "--ais-steps", "1", "--num", "100", "--out", str(out / "ais0")])
    scaled("`pyro-vae evaluate RUN --gaps --num 100`", "100 points (timed at 1/20 of the steps and samples)", 20,
           ["evaluate", run, "--gaps", "--num", "100", "--ais-steps", "50", "--optimal-steps", "50",
            "--num-samples", "250", "--out", str(out / "gaps")],
           ["evaluate", run, "--gaps", "--num", "100", "--ais-steps", "1", "--optimal-steps", "1",
            "--num-samples", "1", "--out", str(out / "gaps0")])
    scaled("`pyro-vae bdmc RUN --num-points 100 --ais-steps 100,1000,10000`", "100 points (timed at 1/20 of the "
           "steps)", 20,
           ["bdmc", run, "--num-points", "100", "--ais-steps", "5,50,500", "--num-samples", "50", "--out",
            str(out / "bdmc")],
           ["bdmc", run, "--num-points", "100", "--ais-steps", "1", "--num-samples", "1", "--out", str(out / "bdmc0")])

    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| command | size | time |\n|---|---|---|")
    for label, size, seconds in rows:
        shown = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
        print(f"| {label} | {size} | {shown} |")


if __name__ == "__main__":
    main()
