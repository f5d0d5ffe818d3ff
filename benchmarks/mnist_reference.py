"""Plausibility at equal budget: pyro_vae's VAE against a plain-PyTorch VAE on static binarized MNIST.

Reference (issue 14): a plain-PyTorch VAE, 784-400-40 ReLU, batch 100, Adam lr 1e-3, reaches
-95.6 +- 0.8 nats of test log p(x) on Larochelle's static binarized MNIST after 10 epochs.  pyro_vae with
the same network and budget,

    pyro-vae train --dataset binarized-mnist --data-dir ../shared/data --hidden 400 --latent-dim 40 \\
        --batch-size 100 --lr 1e-3 --epochs 10 --patience 0

must land within 0.5 nats of it.  This script trains both in one run, per seed:

* pyro_vae: ``launch.train`` with exactly the flags above (loss ``elbo``: Pyro's Trace_ELBO), 50,000
  training images (the validation split only scores epochs);
* plain PyTorch: ``train_step.PlainVAE`` (closed-form KL, ``binary_cross_entropy_with_logits``, fused Adam),
  the same 50,000 images in a seeded order, starting from its own ``build_vae`` weights of the same seed;

and scores both final models (after epoch 10, not the best validation epoch) with ONE evaluator,
``pyro_vae.log_likelihood``: S = 5000 importance samples on the full 10,000-point test set, the same random
numbers for both.  It prints log p(x) +- its standard error over points, the paired difference, and the
verdict against the reference.  Finished pieces (trained models, scores) are kept under ``--out`` and
skipped when the script runs again, so an interrupted run resumes.

    python benchmarks/mnist_reference.py [--data-dir ../shared/data] [--seeds 0] [--epochs 10]
                                         [--num-samples 5000] [--eval-points N] [--out DIR] [--quick]

About 50 minutes on 2 CPU cores per seed, nearly all of it the two S = 5000 evaluations.
"""
import argparse
import json
import math
import platform
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import PlainVAE  # noqa: E402  (the hand-written reference of the step benchmarks)

from pyro_vae.checkpoint import CHECKPOINT, SUMMARY  # noqa: E402
from pyro_vae.config import TrainConfig  # noqa: E402
from pyro_vae.data import load_dataset  # noqa: E402
from pyro_vae.evaluation import log_likelihood  # noqa: E402
from pyro_vae.factory import load_vae, make_adam  # noqa: E402
from pyro_vae.launch import train  # noqa: E402
from pyro_vae.vae import build_vae  # noqa: E402

REFERENCE, REFERENCE_SE, TOLERANCE = -95.6, 0.8, 0.5
HIDDEN, LATENT, BATCH, LR, D = (400,), 40, 100, 1e-3, 784


def train_plain(x_train: torch.Tensor, epochs: int, seed: int, path: Path):
    """The plain-PyTorch VAE after ``epochs`` epochs, as a pyro_vae VAE holding its networks (to be scored)."""
    torch.manual_seed(seed)
    vae = build_vae(D, LATENT, HIDDEN)
    if path.exists():
        vae.load_state_dict(torch.load(path, weights_only=True))
        return vae.eval()
    plain = PlainVAE(vae.encoder, vae.decoder, x_train.shape[0])
    opt = make_adam(list(plain.parameters()), LR)
    for epoch in range(epochs):
        order = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(1000 * seed + epoch))
        total = 0.0
        for idx in order.split(BATCH):
            loss = plain.loss(x_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() / x_train.shape[0] * idx.shape[0] / x_train.shape[0]   # loss: batch sum x N/B
        print(f"  plain PyTorch seed {seed} epoch {epoch + 1}: train -ELBO {total:.2f}", flush=True)
    torch.save(vae.state_dict(), path)
    return vae.eval()


def train_ours(data_dir: str, epochs: int, seed: int, out: Path):
    config = TrainConfig(dataset="binarized-mnist", data_dir=data_dir, hidden=HIDDEN, latent_dim=LATENT,
                         batch_size=BATCH, lr=LR, epochs=epochs, patience=0, seed=seed, out=str(out))
    if not (out / SUMMARY).exists():
        train(config, resume=(out / CHECKPOINT).exists(), progress=True, figures=False)
    vae, _ = load_vae(out / CHECKPOINT)          # the final epoch's model, like the plain one's
    return vae


def score(name: str, vae, x_test: torch.Tensor, num_samples: int, path: Path) -> torch.Tensor:
    if path.exists():
        return torch.tensor(json.loads(path.read_text())["log_px"], dtype=torch.float64)
    torch.manual_seed(12345)                     # the same random numbers for every model
    print(f"  scoring {name}: S = {num_samples} on {x_test.shape[0]} test points", flush=True)
    log_px = log_likelihood(vae.model, vae.guide, x_test, num_samples=num_samples, progress=True).double()
    path.write_text(json.dumps({"log_px": log_px.tolist()}))
    return log_px


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--eval-points", type=int, default=None,
                        help="score every (10000 / N)-th test point (default: all 10,000; never the first N, "
                             "the file is sorted by digit)")
    parser.add_argument("--out", default="benchmarks/out/mnist_reference")
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 epoch, S = 20 on 100 points")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.num_samples, args.eval_points = 1, 20, 100
    out = Path(args.out) / f"epochs{args.epochs}-S{args.num_samples}-M{args.eval_points or 'all'}"
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("binarized-mnist", args.data_dir)
    x_test = data.test
    if args.eval_points:
        x_test = x_test[torch.arange(args.eval_points) * x_test.shape[0] // args.eval_points]
    m = x_test.shape[0]
    print(f"784-400-40 ReLU VAE, batch {BATCH}, Adam lr {LR}, {args.epochs} epochs on {data.train.shape[0]} static "
          f"binarized MNIST images; torch {torch.__version__}, pyro {pyro.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}")
    se = lambda t: (t.std() / math.sqrt(m)).item()   # noqa: E731
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        ours = train_ours(args.data_dir, args.epochs, seed, out / f"pyro_vae-seed{seed}")
        plain = train_plain(data.train, args.epochs, seed, out / f"plain-seed{seed}.pt")
        a = score("pyro_vae", ours, x_test, args.num_samples, out / f"pyro_vae-seed{seed}.json")
        b = score("plain PyTorch", plain, x_test, args.num_samples, out / f"plain-seed{seed}.json")
        rows.append((seed, a, b))
    print(f"test log p(x), S = {args.num_samples} on {m} test points, mean ± SE over points (nats):")
    print(f"  {'seed':>4s} {'pyro_vae':>16s} {'plain PyTorch':>16s} {'paired Δ':>15s}")
    for seed, a, b in rows:
        d = a - b
        print(f"  {seed:4d} {a.mean():9.2f} ± {se(a):4.2f} {b.mean():9.2f} ± {se(b):4.2f} "
              f"{d.mean():+8.2f} ± {se(d):4.2f}")
    ours_mean = sum(a.mean().item() for _, a, _ in rows) / len(rows)
    ok = abs(ours_mean - REFERENCE) <= TOLERANCE
    print(f"REFERENCE plain-PyTorch VAE: {REFERENCE} ± {REFERENCE_SE}; pyro_vae {ours_mean:.2f}: "
          f"{'WITHIN' if ok else 'NOT WITHIN'} {TOLERANCE} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
