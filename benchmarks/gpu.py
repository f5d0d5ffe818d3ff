"""Every GPU check of pyro_vae in one command (issue 12), under 5 minutes on one GPU.

    python benchmarks/gpu.py [--out gpu.json] [--device cuda] [--quick]

What it measures, in one run, on the 784-400-20 Bernoulli VAE (random binary 28x28 data: a step's cost does not
depend on pixel values) with the same networks and the same fused Adam everywhere:

* training samples/s at batch 100 and 1000 of
  - plain PyTorch, eager (the hand-written ELBO of ``benchmarks/train_step.py``);
  - plain PyTorch under ``torch.compile`` (inductor, default mode);
  - pyro_vae ``Trainer.step`` with ``compile="off"`` (Pyro's eager step) and ``compile="auto"`` (the step
    recorded once and replayed inside a CUDA graph), for ``meanfield`` (the plain ELBO's estimator) and
    ``iwae`` with K = 5;
* that the compiled step's first replay matched the eager step (the recorder refuses otherwise, and the script
  says so) and whether a CUDA graph was captured;
* held-out log p(x) with S = 5000 on 1,000 points: plain chunked PyTorch against pyro_vae compiled and eager.

It prints a table and writes the numbers, the GPU's name and the torch version to ``--out`` (JSON), for
``benchmarks/RESULTS.md``.  Target: pyro_vae at batch 100 at or above eager plain PyTorch's samples/s.
``--device cpu --quick`` runs the whole script on a CPU in about a minute (a smoke check of the script).
"""
import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import PlainIWAE, PlainVAE  # noqa: E402
from log_likelihood import plain_log_likelihood  # noqa: E402
from pyro_vae import build_vae, log_likelihood  # noqa: E402
from pyro_vae.data import Dataset  # noqa: E402
from pyro_vae.factory import make_adam  # noqa: E402
from pyro_vae.training import TrainConfig, Trainer  # noqa: E402

NET = dict(hidden=(400,), latent_dim=20)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples_per_second(step, batches, device, seconds):
    """Steps over ``batches`` (cycled) for about ``seconds`` after a warm-up of 10 steps; samples/s."""
    for i in range(10):
        step(batches[i % len(batches)])
    sync(device)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            step(batches[done % len(batches)])
            done += 1
        sync(device)
    return done * batches[0].shape[0] / (time.perf_counter() - t0)


def plain_step(cls, base, num_data, compiled):
    plain = cls(copy.deepcopy(base.encoder), copy.deepcopy(base.decoder), num_data)
    opt = make_adam(list(plain.parameters()), 1e-3)
    loss_fn = torch.compile(plain.loss) if compiled else plain.loss

    def step(x):
        loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per runner and batch size")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check of the script")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run with --device cpu --quick for a smoke check")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    seconds = 0.5 if args.quick else args.seconds
    report = {"device": name, "torch": torch.__version__, "python": platform.python_version(), "train": {},
              "notes": []}
    print(f"pyro_vae GPU checks on {name}; torch {torch.__version__}")

    n = 60000
    g = torch.Generator().manual_seed(0)
    x_all = (torch.rand(n if not args.quick else 8000, 784, generator=g) < 0.3).float()
    data = Dataset("random", x_all, x_all[:1000], x_all[:1000], None, None, None, (1, 28, 28), "static")
    torch.manual_seed(0)
    base = build_vae(784, **NET).to(device)

    with tempfile.TemporaryDirectory() as out:
        for batch in (100, 1000):
            batches = [x_all[i * batch:(i + 1) * batch].to(device) for i in range(8)]
            rows = {"plain eager": plain_step(PlainVAE, base, n, False),
                    "plain torch.compile": plain_step(PlainVAE, base, n, True),
                    "plain IWAE-5 eager": plain_step(PlainIWAE, base, n, False)}
            for loss in ("meanfield", "iwae"):
                for mode in ("off", "auto"):
                    config = TrainConfig(**NET, batch_size=batch, loss=loss, num_particles=5 if loss == "iwae" else 1,
                                         patience=0, compile=mode, device=args.device, out=out)
                    notes = []
                    trainer = Trainer(copy.deepcopy(base), data, config, progress=False,
                                      hooks=[_Notes(notes)])
                    rows[f"pyro_vae {loss} ({'compiled' if mode == 'auto' else 'eager'})"] = trainer.step
                    if mode == "auto":
                        report["notes"].append({"batch": batch, "loss": loss, "trainer": trainer, "lines": notes})
            results = {}
            for label, step in rows.items():
                try:
                    results[label] = samples_per_second(step, batches, device, seconds)
                except Exception as error:  # noqa: BLE001 - torch.compile may fail on a machine; say so, go on
                    results[label] = None
                    print(f"  {label}: failed ({type(error).__name__}: {str(error).splitlines()[0][:120]})")
            report["train"][batch] = results
            print(f"training samples/s at batch {batch}:")
            for label, value in results.items():
                ratio = "" if value is None or not results["plain eager"] else \
                    f"  {value / results['plain eager']:.2f}x plain eager"
                print(f"  {label:<32s} {'failed' if value is None else f'{value:12,.0f}'}{ratio}")

    for entry in report["notes"]:
        compiled = entry.pop("trainer").compiled
        entry["disabled"] = compiled.disabled
        entry["cuda_graphs"] = sum(r.cuda_graph is not None for r in compiled.recordings.values())
        print(f"  compile notes, {entry['loss']} at batch {entry['batch']}: " + " | ".join(entry["lines"][-2:])
              + (f" | RAN EAGERLY: {entry['disabled']}" if entry["disabled"] else ""))

    points, samples = (100, 500) if args.quick else (1000, 5000)
    x = x_all[:points].to(device)
    vae = copy.deepcopy(base).eval()
    timings = {}
    for label, run in (("plain chunked", lambda: plain_log_likelihood(vae.encoder, vae.decoder, x, samples, 500, 100)),
                       ("pyro_vae compiled", lambda: log_likelihood(vae.model, vae.guide, x, num_samples=samples)),
                       ("pyro_vae eager", lambda: log_likelihood(vae.model, vae.guide, x, num_samples=samples,
                                                                 compile="off"))):
        sync(device)
        t0 = time.perf_counter()
        value = float(run().double().mean())
        sync(device)
        timings[label] = {"seconds": time.perf_counter() - t0, "mean_log_px": value}
    report["log_likelihood"] = {"points": points, "samples": samples, **timings}
    print(f"log p(x), S = {samples} on {points} points:")
    for label, t in timings.items():
        print(f"  {label:<20s} {t['seconds']:8.2f} s  mean {t['mean_log_px']:.3f}  "
              f"{t['seconds'] / timings['plain chunked']['seconds']:.2f}x plain")
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


class _Notes:
    """A hook that keeps the compile notes (pyro_vae.hooks.Hook's on_note)."""

    def __init__(self, lines):
        self.lines = lines

    def __getattr__(self, name):               # every other event: nothing
        if name.startswith("on_") or name == "stop_reason":
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_note(self, trainer, line):
        self.lines.append(line)


if __name__ == "__main__":
    main()
