"""Seconds per epoch and test log p(x): pyro_vae against plain PyTorch, Pyro's own SVI and pythae, in one run.

Setting: a 784-400-20 MLP VAE with a Bernoulli likelihood, batch 100, Adam (lr 1e-3), trained for the
same number of epochs as a VAE (ELBO) and as an IWAE with K = 5, on statically binarized Fashion-MNIST
(all 60,000 training images, from Debian's dataset-fashion-mnist package where installed, else random
binary images).  Every implementation starts from the same weights (deep copies of one built VAE's
encoder and decoder) and sees the same batches in the same order (a seeded permutation per epoch).

The contenders, per objective:

* plain PyTorch: what a competent engineer writes by hand, the same fused Adam as the trainer.  ELBO:
  reparameterised z, ``binary_cross_entropy_with_logits``, closed-form KL, scaled by N/B.  IWAE-5:
  K reparameterised samples [K, B, Z], log w = log p(x|z) + log p(z) - log q(z|x) with the Gaussian
  log-densities written out, logsumexp over K minus log K, scaled by N/B.
* pyro_vae: ``Trainer.step`` with loss ``elbo`` (Trace_ELBO: Monte-Carlo KL), ``meanfield``
  (TraceMeanField_ELBO: the closed-form KL, the plain ELBO's estimator) and ``iwae`` (K = 5).
* Pyro SVI, the textbook way: ``pyro.module``, ``pyro.plate``, ``Normal(...).to_event(1)``,
  ``Bernoulli(logits=...).to_event(1)``, ``SVI`` with ``pyro.optim.Adam`` and ``Trace_ELBO()`` or
  ``RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True)`` (alpha = 0 is the IWAE-5 bound).
  Distribution argument checks off, as in Pyro's VAE tutorial; Pyro's own checks on (its default).
  Pyro 1.9's RenyiELBO applies a subsampling plate's N/B scale to the log weights *inside* the
  logsumexp, which is another objective, so its plate is left unscaled (the sum over the batch).
* pythae (where ``import pythae`` works): its VAE and IWAE (number_samples=5) on the same networks in
  its BaseEncoder/BaseDecoder wrappers, trained by its ``BaseTrainer`` (its DataLoader; Adam with
  ``fused=True`` through ``optimizer_params``, like the plain reference).  pythae averages its losses
  over the batch.

The unscaled losses only rescale the gradient by a constant, to which Adam is nearly invariant.
Implementations are interleaved by epoch (epoch 1 of each, then epoch 2 of each in reverse order, ...),
so drifts in machine load hit all alike, after the same 3 untimed warm-up steps for each; s/epoch is
the median over epochs.  Every trained
encoder/decoder pair is then scored by ONE evaluator, ``pyro_vae.log_likelihood`` (S importance
samples on the first M test points, the same random numbers for every model), reported as the mean
over points +- its standard error, and as the paired difference from plain PyTorch of the same
objective.  Training uses common random numbers too: each implementation draws from its own copy of
one seeded stream, so those that draw the same noise in the same order for the same estimator (plain
PyTorch, pyro_vae ``meanfield``, pythae's VAE; plain PyTorch, pyro_vae ``iwae``, Pyro's RenyiELBO)
train the same model up to rounding, and any difference in log p(x) is a difference in the gradient.
Trace_ELBO (Monte-Carlo KL) is another estimator and pythae's IWAE draws its noise as [B, K, Z]: for
them the paired error bar does not cover training noise (another seed moves log p(x) by more).
Targets: pyro_vae trains within 1.25x of plain PyTorch and faster than pythae; its log p(x) is not
below plain PyTorch's by more than 2 paired standard errors (+ 0.01 nats for rounding).

    python benchmarks/peers.py [--epochs 3] [--train-size 60000] [--num-samples 1000]
                               [--eval-points 1000] [--threads N] [--quick]

``--quick`` is a smoke check (2000 training points, 1 epoch, S = 50 on 100 points, ~15 s); the
default run takes about 6 minutes on 2 quiet cores with pythae, 4 without (estimated).

pythae is best installed in its own environment (it may pin older packages):
``python -m venv venv-pythae && venv-pythae/bin/pip install pythae torch pyro-ppl scikit-learn
tqdm matplotlib && venv-pythae/bin/pip install -e . --no-deps``, then run this script with that python.
"""
import argparse
import contextlib
import copy
import dataclasses
import io
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from pyro.infer import SVI, RenyiELBO, Trace_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import PlainIWAE, PlainVAE, binary_data  # noqa: E402  (the same data and references)

from pyro_vae.evaluation import log_likelihood  # noqa: E402
from pyro_vae.factory import make_adam
from pyro_vae.training import TrainConfig, Trainer  # noqa: E402
from pyro_vae.vae import build_vae  # noqa: E402

BATCH, HIDDEN, LATENT, D, K, LR = 100, (400,), 20, 784, 5, 1e-3
LOG_2PI = math.log(2 * math.pi)


@dataclasses.dataclass
class Runner:
    name: str
    objective: str
    step: callable          # one optimiser step on the batch of these training indices
    encoder: torch.nn.Module
    decoder: torch.nn.Module
    epoch: callable = None  # one epoch over an index permutation; default: step() on each batch
    times: list = dataclasses.field(default_factory=list)
    rng: torch.Tensor = dataclasses.field(default_factory=lambda: torch.Generator().manual_seed(1).get_state())

    def run_epoch(self, order, timed=True):
        torch.set_rng_state(self.rng)       # its own random stream, the same seed for all (common noise)
        t0 = time.perf_counter()
        if self.epoch is not None and timed:
            self.epoch(order)
        else:
            for idx in order.split(BATCH):
                self.step(idx)
        if timed:
            self.times.append(time.perf_counter() - t0)
        self.rng = torch.get_rng_state()


def plain_runner(objective, base, train):
    cls = PlainVAE if objective == "ELBO" else PlainIWAE
    plain = cls(copy.deepcopy(base.encoder), copy.deepcopy(base.decoder), train.shape[0])
    opt = make_adam(list(plain.parameters()), LR)

    def step(idx):
        loss = plain.loss(train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
    return Runner("plain PyTorch", objective, step, plain.encoder, plain.decoder)


def pyro_vae_runner(loss, base, data, out):
    objective = "IWAE-5" if loss == "iwae" else "ELBO"
    config = TrainConfig(hidden=HIDDEN, latent_dim=LATENT, batch_size=BATCH, loss=loss,
                         num_particles=K if loss == "iwae" else 1, lr=LR, patience=0, out=out)
    vae = copy.deepcopy(base)
    trainer = Trainer(vae, data, config, progress=False)   # timed: its public step
    return Runner(f"pyro_vae Trainer ({loss})", objective, lambda idx: trainer.step(data.train[idx]),
                  vae.encoder, vae.decoder)


def pyro_svi_runner(objective, base, train):
    enc, dec = copy.deepcopy(base.encoder), copy.deepcopy(base.decoder)
    n, prefix = train.shape[0], objective.lower()            # own param-store names per SVI
    scaled = objective == "ELBO"                             # RenyiELBO: no N/B inside its logsumexp

    def data_plate(x, idx):
        return pyro.plate("data", n, subsample=idx) if scaled else pyro.plate("data", x.shape[0])

    def model(x, idx):
        pyro.module(prefix + "_decoder", dec)
        with data_plate(x, idx):
            z_loc, z_scale = x.new_zeros(x.shape[0], LATENT), x.new_ones(x.shape[0], LATENT)
            z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x, idx):
        pyro.module(prefix + "_encoder", enc)
        with data_plate(x, idx):
            loc, scale = enc(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    elbo = Trace_ELBO() if scaled else RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True,
                                                 max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), elbo)
    name = "Pyro SVI (Trace_ELBO)" if scaled else "Pyro SVI (RenyiELBO a=0)"
    return Runner(name, objective, lambda idx: svi.step(train[idx], idx), enc, dec)


def pythae_runner(objective, base, train, out):
    """pythae's own trainer; one epoch = its BaseTrainer.train_step(epoch) (DataLoader, forward, Adam)."""
    from pythae.data.datasets import BaseDataset, collate_dataset_output
    from pythae.models import IWAE, VAE, IWAEConfig, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(base.encoder)

        def forward(self, x):
            loc, scale = self.net(x)
            return ModelOutput(embedding=loc, log_covariance=2 * scale.log())

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(base.decoder)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    common = dict(input_dim=(D,), latent_dim=LATENT, reconstruction_loss="bce")
    config = VAEConfig(**common) if objective == "ELBO" else IWAEConfig(**common, number_samples=K)
    model = (VAE if objective == "ELBO" else IWAE)(config, encoder=Encoder(), decoder=Decoder())
    dataset = BaseDataset(train, torch.zeros(train.shape[0]))
    train_config = BaseTrainerConfig(output_dir=out, per_device_train_batch_size=BATCH, num_epochs=1,
                                     learning_rate=LR, optimizer_params={"fused": True}, no_cuda=True)
    logging.disable(logging.INFO)              # pythae logs its set-up to the console
    try:
        trainer = BaseTrainer(model, dataset, None, train_config)
        trainer.prepare_training()
    finally:
        logging.disable(logging.NOTSET)
    order = []                                 # the sampler: this epoch's permutation, set below
    trainer.train_loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=order,   # its own
                                                       collate_fn=collate_dataset_output,           # seed stream:
                                                       generator=torch.Generator())                 # common noise
    epochs_done = []

    def epoch(perm):
        order[:] = perm.tolist()
        epochs_done.append(1)
        with contextlib.redirect_stderr(io.StringIO()):   # its per-epoch tqdm bar
            trainer.callback_handler.on_epoch_begin(training_config=train_config, epoch=len(epochs_done))
            trainer.train_step(len(epochs_done))
            trainer.callback_handler.on_epoch_end(training_config=train_config)

    def step(idx):
        trainer._optimizers_step(trainer.model({"data": train[idx]}))
    return Runner(f"pythae BaseTrainer ({model.model_name})", objective, step,
                  model.encoder.net, model.decoder.net, epoch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=60000)
    parser.add_argument("--num-samples", type=int, default=1000, help="S, importance samples per test point")
    parser.add_argument("--eval-points", type=int, default=1000, help="M, the first M test points")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 2000 points, 1 epoch, S=50, 100 points")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.epochs, args.num_samples, args.eval_points = 2000, 1, 50, 100
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import pythae  # noqa: F401
        have_pythae = True
    except ImportError:
        have_pythae = False

    data, source = binary_data(args.train_size)
    train = torch.cat([data.train, data.valid])[:args.train_size]   # all 60,000 (no validation here)
    data = dataclasses.replace(data, train=train)
    n, x_test = train.shape[0], data.test[:args.eval_points]
    pyro.clear_param_store()
    pyro.distributions.enable_validation(False)   # as Pyro's VAE tutorial does
    torch.manual_seed(0)
    base = build_vae(D, LATENT, HIDDEN)
    with tempfile.TemporaryDirectory() as out:
        runners = []
        for objective in ("ELBO", "IWAE-5"):
            runners += [plain_runner(objective, base, train)]
            runners += [pyro_vae_runner(loss, base, data, out) for loss in
                        (("elbo", "meanfield") if objective == "ELBO" else ("iwae",))]
            runners.append(pyro_svi_runner(objective, base, train))
            if have_pythae:
                runners.append(pythae_runner(objective, base, train, out))
        warm = torch.randperm(n, generator=torch.Generator().manual_seed(999))[:3 * BATCH]
        for r in runners:                       # the same 3 untimed warm-up steps for everyone
            r.run_epoch(warm, timed=False)
        for e in range(args.epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + e))
            for r in (runners if e % 2 == 0 else runners[::-1]):
                r.run_epoch(order)

        scores = {}
        for r in runners:                       # one evaluator, the same random numbers for every model
            ev = build_vae(D, LATENT, HIDDEN).eval()
            ev.encoder, ev.decoder = r.encoder.eval(), r.decoder.eval()
            torch.manual_seed(12345)
            scores[r.name, r.objective] = log_likelihood(ev.model, ev.guide, x_test, num_samples=args.num_samples,
                                                         particle_chunk=min(500, args.num_samples), batch_size=100)

    m = x_test.shape[0]
    se = lambda t: (t.std() / math.sqrt(m)).item() if m > 1 else 0.0   # noqa: E731
    print(f"peer benchmark: 784-{HIDDEN[0]}-{LATENT} MLP VAE, Bernoulli likelihood, batch {BATCH}, Adam lr {LR}, "
          f"{args.epochs} epoch(s) on {n} training points")
    print(f"data: {source}; torch {torch.__version__}, pyro {pyro.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"s/epoch: median over {args.epochs} interleaved epoch(s) (pythae: its BaseTrainer.train_step per epoch); "
          f"log p(x): S={args.num_samples} on the first {m} test points, mean ± SE; Δ: paired vs plain PyTorch")
    print(f"  {'implementation':<30s} {'objective':<9s} {'s/epoch':>8s} {'ratio':>6s} {'log p(x) ± SE':>18s} "
          f"{'Δ vs plain ± SE':>17s}")
    med, delta = {}, {}
    for r in runners:
        key, ref = (r.name, r.objective), ("plain PyTorch", r.objective)
        med[key] = statistics.median(r.times)
        ll, d = scores[key].double(), (scores[key] - scores[ref]).double()
        delta[key] = d.mean().item(), se(d)
        diff = "" if key == ref else f"{delta[key][0]:+8.2f} ± {delta[key][1]:5.2f}"
        print(f"  {r.name:<30s} {r.objective:<9s} {med[key]:8.2f} {med[key] / med[ref]:6.3f} "
              f"{ll.mean().item():9.2f} ± {se(ll):5.2f} {diff:>17s}")
    print("pythae's losses are batch means and Pyro's RenyiELBO runs unscaled: a constant factor on the gradient, "
          "which Adam is nearly invariant to.\npyro_vae elbo (Trace_ELBO, Monte-Carlo KL) is another estimator than "
          "the plain ELBO (closed-form KL); meanfield is the like-for-like one.")
    for obj, loss in (("ELBO", "elbo"), ("ELBO", "meanfield"), ("IWAE-5", "iwae")):
        key = (f"pyro_vae Trainer ({loss})", obj)
        ratio = med[key] / med["plain PyTorch", obj]
        print(f"RATIO pyro_vae {loss}/plain = {ratio:.3f} (target <= 1.25): "
              f"{'OK' if ratio <= 1.25 else 'ABOVE TARGET'}")
        if have_pythae:
            vs = med[key] / med[f"pythae BaseTrainer ({'VAE' if obj == 'ELBO' else 'IWAE'})", obj]
            print(f"RATIO pyro_vae {loss}/pythae = {vs:.3f} (target < 1): {'OK' if vs < 1 else 'NOT FASTER'}")
        d, d_se = delta[key]
        print(f"LOGPX pyro_vae {loss} - plain = {d:+.2f} ± {d_se:.2f} nats (target >= -2 SE - 0.01): "
              f"{'OK' if d >= -2 * d_se - 0.01 else 'BELOW TARGET'}")
    if not have_pythae:
        print("pythae: skipped (not importable here); `pip install pythae`, ideally in a separate venv as the "
              "docstring shows, then run this script with that venv's python")


if __name__ == "__main__":
    main()
