"""Milliseconds per training step: pyro_vae's trainer against a plain-PyTorch VAE, measured in one run.

Setting (issue 2): a 784-400-20 MLP VAE with a Bernoulli likelihood, batch 128, Adam, on binary
28x28 data (Fashion-MNIST from Debian's dataset-fashion-mnist package where installed, else random
binary images: a step's cost does not depend on pixel values).

The reference is what a competent engineer writes by hand: the *same* encoder/decoder modules
(a deep copy, same initial weights), reparameterised z, ``binary_cross_entropy_with_logits`` summed
over pixels, the closed-form Gaussian KL, the full-data scaling N/B, and the same ``torch.optim.Adam``
(fused kernel where torch has one, as the trainer uses).  pyro_vae runs ``Trainer.step`` (Pyro's ``Trace_ELBO`` or
``TraceMeanField_ELBO``, with everything the trainer does per step).

The two are timed in interleaved rounds (A B B A ...) so that drifts in machine load hit both;
each reported number is the median over rounds.  Target: ratio <= 1.25.

    python benchmarks/train_step.py [--rounds 60] [--steps 25] [--threads N] [--profile]
"""
import argparse
import copy
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

BATCH, HIDDEN, LATENT = 128, (400,), 20


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=25, help="steps per timed block")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="also print where pyro_vae's step spends its time")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    data, source = binary_data(60000)
    n = data.train.shape[0]
    batches = [data.train[i * BATCH:(i + 1) * BATCH] for i in range(min(200, n // BATCH))]

    with tempfile.TemporaryDirectory() as out:
        trainers = {}
        for loss in ("elbo", "meanfield"):
            config = TrainConfig(hidden=HIDDEN, latent_dim=LATENT, batch_size=BATCH, loss=loss, patience=0, out=out)
            torch.manual_seed(0)
            vae = build_vae(784, LATENT, HIDDEN)
            trainers[loss] = Trainer(vae, data, config, progress=False)   # timed: its public step
        torch.manual_seed(0)
        ref_vae = copy.deepcopy(build_vae(784, LATENT, HIDDEN))
        plain = PlainVAE(ref_vae.encoder, ref_vae.decoder, n)
        plain_opt = make_adam(list(plain.parameters()), config.lr)   # the trainer's Adam (fused kernel)

        def plain_step(x):
            loss = plain.loss(x)
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()
            return loss.item()

        runners = {"plain PyTorch": plain_step,
                   "pyro_vae elbo (Trace_ELBO)": trainers["elbo"].step,
                   "pyro_vae meanfield (TraceMeanField_ELBO)": trainers["meanfield"].step}

        def block(step):
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(batches[i % len(batches)])
            return (time.perf_counter() - t0) / args.steps * 1e3

        for step in runners.values():   # warm-up
            block(step)
        times = {name: [] for name in runners}
        names = list(runners)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                times[name].append(block(runners[name]))

        print(f"pyro_vae train step benchmark: 784-{HIDDEN[0]}-{LATENT} MLP, Bernoulli likelihood, batch {BATCH}")
        print(f"data: {source}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
        print(f"{args.rounds} interleaved rounds of {args.steps} steps; median ms/step (min-max)")
        base = statistics.median(times["plain PyTorch"])
        for name in names:
            med = statistics.median(times[name])
            print(f"  {name:<42s} {med:7.2f} ms  ({min(times[name]):.2f}-{max(times[name]):.2f})  "
                  f"ratio {med / base:.3f}")
        ratio = statistics.median(times["pyro_vae elbo (Trace_ELBO)"]) / base
        print(f"RATIO pyro_vae/plain = {ratio:.3f} (target <= 1.25): {'OK' if ratio <= 1.25 else 'ABOVE TARGET'}")

        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            block(runners["pyro_vae elbo (Trace_ELBO)"])
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumtime").print_stats(30)


if __name__ == "__main__":
    main()
