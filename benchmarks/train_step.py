"""Milliseconds per training step: pyro_vae's trainer, compiled and eager, against plain PyTorch, in one run.

Setting: a VAE with a Bernoulli likelihood, batch 100, Adam, on binary 28x28 data (Fashion-MNIST from Debian's
dataset-fashion-mnist package where installed, else random binary images: a step's cost does not depend on
pixel values), with either network:

* ``--net 400``: 784-400-20 ReLU MLP (the issue-2 setting);
* ``--net iwae``: the IWAE paper's 784-200-200-50 tanh MLP.

The references are what a competent engineer writes by hand: the *same* encoder/decoder modules (deep
copies, same initial weights), the same fused ``torch.optim.Adam`` as the trainer, the full-data scaling N/B.
ELBO: reparameterised z, ``binary_cross_entropy_with_logits`` summed over pixels, the closed-form Gaussian
KL.  IWAE-5: K = 5 reparameterised samples [K, B, Z], log w = log p(x|z) + log p(z) - log q(z|x) with the
Gaussian log-densities written out, logsumexp over K minus log K.  pyro_vae runs ``Trainer.step`` as users
call it, with ``compile="auto"`` (the default: each batch shape's step recorded once and replayed) and with
``compile="off"`` (Pyro's eager step): loss ``elbo`` (Trace_ELBO, Monte-Carlo KL), ``meanfield``
(TraceMeanField_ELBO, the closed-form KL: the plain ELBO's estimator) and ``iwae`` with K = 5.

All runners are timed in interleaved rounds (A B C ... then reversed) so that drifts in machine load hit all;
each reported number is the median over rounds.  Target (issue 12): compiled within 1.05x of plain PyTorch.

    python benchmarks/train_step.py [--net 400|iwae] [--rounds 30] [--steps 25] [--threads N] [--profile]
"""
import argparse
import copy
import math
import cProfile
import pstats
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from pyro_vae.data import Dataset, DataError, load_dataset
from pyro_vae.factory import make_adam
from pyro_vae.training import TrainConfig, Trainer
from pyro_vae.vae import build_vae

BATCH, K = 100, 5
NETS = {"400": dict(hidden=(400,), latent_dim=20, activation="relu"),
        "iwae": dict(hidden=(200, 200), latent_dim=50, activation="tanh")}
LOG_2PI = math.log(2 * math.pi)


def binary_data(num: int) -> Dataset:
    try:
        data = load_dataset("fashion-mnist", binarize="static")
        source = "Fashion-MNIST (Debian package), statically binarized"
    except DataError:
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(num + 1000, 784, generator=g) < 0.3).float()
        data = Dataset("random", x[:num], x[num:], x[num:], None, None, None, (1, 28, 28), "static")
        source = "random binary 28x28 images (Fashion-MNIST not installed)"
    return data, source


class PlainVAE(torch.nn.Module):
    """The hand-written reference: same networks, negative ELBO with analytic KL, scaled by N / B."""

    def __init__(self, encoder, decoder, num_data):
        super().__init__()
        self.encoder, self.decoder, self.num_data = encoder, decoder, num_data

    def loss(self, x):
        loc, scale = self.encoder(x)                                         # [B, Z]
        z = loc + scale * torch.randn_like(loc)
        logits = self.decoder(z)                                             # [B, D]
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum()
        return -(log_px - kl) * (self.num_data / x.shape[0])


class PlainIWAE(PlainVAE):
    """The hand-written IWAE-K: minus the per-point bound summed over the batch, scaled by N / B."""

    def loss(self, x):
        loc, scale = self.encoder(x)                                         # [B, Z]
        eps = torch.randn((K,) + loc.shape)
        z = loc + scale * eps                                                # [K, B, Z]
        logits = self.decoder(z)                                             # [K, B, D]
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz = (-0.5 * (eps.pow(2) + LOG_2PI) - scale.log()).sum(-1)       # log N(z; loc, scale), z = loc + scale eps
        bound = torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(K)   # [B]
        return -bound.sum() * (self.num_data / x.shape[0])


def plain_step_of(cls, base, num_data, lr):
    """One hand-written optimiser step (zero_grad, backward, fused Adam), as a function of the batch."""
    plain = cls(copy.deepcopy(base.encoder), copy.deepcopy(base.decoder), num_data)
    opt = make_adam(list(plain.parameters()), lr)

    def step(x):
        loss = plain.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="400")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=25, help="steps per timed block")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="also print where pyro_vae's step spends its time")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    net = NETS[args.net]
    torch.manual_seed(0)
    data, source = binary_data(60000)
    n = data.train.shape[0]
    batches = [data.train[i * BATCH:(i + 1) * BATCH] for i in range(min(200, n // BATCH))]

    with tempfile.TemporaryDirectory() as out:
        torch.manual_seed(0)
        base = build_vae(784, **net)
        runners = {"plain PyTorch ELBO": plain_step_of(PlainVAE, base, n, 1e-3),
                   "plain PyTorch IWAE-5": plain_step_of(PlainIWAE, base, n, 1e-3)}
        trainers = {}
        for loss in ("elbo", "meanfield", "iwae"):
            for mode in ("auto", "off"):
                config = TrainConfig(**net, batch_size=BATCH, loss=loss, num_particles=K if loss == "iwae" else 1,
                                     patience=0, compile=mode, out=out)
                trainer = Trainer(copy.deepcopy(base), data, config, progress=False)   # timed: its public step
                trainer.note = lambda line: None
                name = f"pyro_vae {loss}{'-5' if loss == 'iwae' else ''} ({'compiled' if mode == 'auto' else 'eager'})"
                trainers[name] = trainer
                runners[name] = trainer.step

        def block(step):
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(batches[i % len(batches)])
            return (time.perf_counter() - t0) / args.steps * 1e3

        for step in runners.values():   # warm-up: the compiled runners record their step here
            block(step)
        times = {name: [] for name in runners}
        names = list(runners)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                times[name].append(block(runners[name]))

        hidden = "-".join(str(h) for h in net["hidden"])
        print(f"pyro_vae train step benchmark: 784-{hidden}-{net['latent_dim']} {net['activation']} MLP, "
              f"Bernoulli likelihood, batch {BATCH}")
        print(f"data: {source}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
        print(f"{args.rounds} interleaved rounds of {args.steps} steps; median ms/step (min-max), ratio to the "
              f"plain PyTorch step of the same bound")
        med = {name: statistics.median(times[name]) for name in names}
        for name in names:
            ref = med["plain PyTorch IWAE-5" if "iwae" in name or "IWAE" in name else "plain PyTorch ELBO"]
            print(f"  {name:<34s} {med[name]:7.2f} ms  ({min(times[name]):.2f}-{max(times[name]):.2f})  "
                  f"ratio {med[name] / ref:.3f}")
        for name, trainer in trainers.items():
            if trainer.compiled.disabled and "compiled" in name:
                print(f"  NOTE {name} ran eagerly: {trainer.compiled.disabled}")
        for loss in ("elbo", "meanfield", "iwae-5"):
            ref = med["plain PyTorch IWAE-5" if loss == "iwae-5" else "plain PyTorch ELBO"]
            ratio = med[f"pyro_vae {loss} (compiled)"] / ref
            print(f"RATIO {loss} compiled/plain = {ratio:.3f} (target <= 1.05): "
                  f"{'OK' if ratio <= 1.05 else 'ABOVE TARGET'}; eager/plain = {med[f'pyro_vae {loss} (eager)'] / ref:.3f}")

        if args.profile:
            for name in ("pyro_vae elbo (compiled)", "pyro_vae elbo (eager)"):
                print(f"\n--- cProfile of {args.steps} steps: {name}")
                profiler = cProfile.Profile()
                profiler.enable()
                block(runners[name])
                profiler.disable()
                pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
