"""Binarized MNIST study: VAE vs IWAE (standard and DReG gradients) and the VampPrior on the two MNIST
benchmarks of the literature, with the published numbers and the fraction of their budget beside ours.

* **static**: Larochelle's fixed binarization (``binarized_mnist_{train,valid,test}.amat[.gz]``, the official
  50000/10000/10000 split), the benchmark of the VampPrior paper and of most later work;
* **dynamic**: MNIST's IDX files, binarized afresh every epoch (pixel intensities as Bernoulli
  probabilities), with the validation and test sets binarized once with a fixed seed: the setting of the
  IWAE paper's Table 1.

Every row but the VampPrior's uses the IWAE paper's one-stochastic-layer network, 784-200-200-50 tanh, batch
100, Adam lr 1e-3.
The VampPrior row (static only, K = 500 pseudo-inputs) trains the network of :mod:`experiments.priors_mnist`
instead, 784-300-300-40 ReLU, Adam 5e-4 at a constant rate, KL warm-up over 10 epochs: the nearest this code
has to the VampPrior paper's (gated 300-300, 40 latents, Adam 5e-4, warm-up over 100 epochs), so its published
-85.57 is a reference, not a like-for-like number.  On the tanh network the VampPrior collapses in the first
epoch, with or without a warm-up (every q(z | x) alike, so equal to the prior: KL = 0 and the decoder left with
the pixel marginals, -206.5 nats; measured 2026-12-07), where the standard prior escapes by the second.
Test log p(x) is importance sampling with S = 5000 on the **full** 10,000-point test set (standard error over
points within a run, over seeds across runs); the train - test gap compares it with as many (``gap_points``)
training points drawn at random.

Budgets (2 CPU cores). The S = 5000 evaluation of one model on 10,000 points takes ~15 minutes here in the
default chunks of 100 points, ~5 minutes in chunks of 20 (measured on the same network in the estimator study,
2026-12-07). No budget that scores 21 models on the full test set fits in 30 minutes, however fast the code:
the decoder's matrix products alone are 50 x 10^6 samples x 0.41 MFLOP = 2.1e13 FLOP per model, 100 s at this
machine's ~200 GFLOP/s, so 21 models x (10,000 test + 2000 gap points) need at least 40 minutes.

* ``smoke``: seconds, generated files, for the tests;
* ``small``: 3 seeds x 7 rows, 3 epochs each, evaluated in chunks of 20 points: 2.0 hours (measured 2026-12-07
  on 2 cores), nearly all of it evaluation; resumable run by run;
* ``medium``: 1 seed x 7 rows on the IWAE paper's learning-rate schedule (``--lr-schedule iwae``), trained
  in stages across sessions: ``--hours H`` of training per invocation (:mod:`experiments.staged`), a curve
  point (S = 5000 on 1000 strided test points) at each stage end and every 100 epochs, the full evaluation
  at the epoch reached;
* ``full``: the paper's 3280 epochs, 3 seeds (a GPU's job).

Both binarizations need the files on disk: ``--data-dir DIR`` holding ``binarized_mnist_*.amat[.gz]`` directly
or under ``binarized_mnist/``, and MNIST's four IDX files (plain or ``.gz``) directly, under ``MNIST/raw/`` or
under ``mnist/``, so ``--data-dir ../shared/data`` reads both from the shared folder; ``--download`` fetches
the missing files where there is internet.  Any subset of Larochelle's test file (sorted by digit) is strided.
"""
from pathlib import Path
from typing import Dict, List, Optional

from pyro_vae.config import TrainConfig

from . import staged
from .common import (data_settings, describe_chunking, format_mean_se, plot_study, run_one, summarize, write_metrics,
                     write_table)
from .estimators import run_slug
from .priors_mnist import NETWORK as PRIORS_NETWORK

NETWORK = dict(hidden=(200, 200), latent_dim=50, activation="tanh", batch_size=100, lr=1e-3, patience=0)

BINARIZATIONS = {
    "static": dict(dataset="binarized-mnist", binarize="none"),
    "dynamic": dict(dataset="mnist", binarize="dynamic"),
}

# The VampPrior row's network and optimiser (the docstring says why not the tanh one): experiments.priors_mnist's
VAMP_NETWORK = dict(PRIORS_NETWORK, activation="relu", lr_schedule="none")
VAMP = dict(vamp_train=VAMP_NETWORK, vamp_network="on 784-300-300-40 ReLU, Adam 5e-4 at a constant rate, KL "
                                                  "warm-up over 10 epochs (on the tanh network it collapses)")

# name -> (settings, binarizations it runs on); VampPrior's components are the budget's ("vamp_components"), its
# network the budget's "vamp_train" where it has one (the smoke budget keeps its tiny one)
ROWS = {
    "VAE k=1": (dict(loss="elbo"), ("static", "dynamic")),
    "IWAE k=5": (dict(loss="iwae", num_particles=5), ("static", "dynamic")),
    "IWAE-DReG k=5": (dict(loss="iwae", num_particles=5, gradient="dreg"), ("static", "dynamic")),
    "VampPrior VAE k=1": (dict(loss="elbo", prior="vamp"), ("static",)),
}

# Published test log p(x) in nats (the papers report -log p(x)), one stochastic layer, and the epochs of
# the paper's training: Burda et al. 2016 (3280 epochs; static values from their appendix) and Tomczak &
# Welling 2018 (VampPrior, up to 2000 epochs with early stopping, their own network).
PUBLISHED: Dict[tuple, tuple] = {
    ("dynamic", "VAE k=1"): (-86.76, 3280), ("dynamic", "IWAE k=5"): (-85.54, 3280),
    ("static", "VAE k=1"): (-88.71, 3280), ("static", "IWAE k=5"): (-87.63, 3280),
    ("static", "VampPrior VAE k=1"): (-85.57, 2000),
}
PUBLISHED_SOURCES: List[str] = [
    "dynamic: Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016, Table 1, one "
    "stochastic layer: 784-200-200-50 tanh, batch 20, 3280 epochs (8 stages of 3^i epochs, learning rate 1e-3 "
    "decayed by 10^(-1/7) per stage), S = 5000.",
    "static (†): the same paper's appendix (fixed binarization; VAE and IWAE rows; taken from reproductions "
    "quoting the appendix, not from its text).",
    "VampPrior: Tomczak & Welling, *VAE with a VampPrior*, AISTATS 2018: one layer, K = 500, gated 300-300 MLP, "
    "40 latents, warm-up, up to 2000 epochs with early stopping: another network than ours.",
    "No published number at k = 5 with DReG on this network. Ours differ in batch size (100) and, above all, "
    "epochs: the fraction column says how much of the paper's budget a row had.",
]

BUDGETS: Dict[str, Dict] = {
    "smoke": dict(seeds=[0], num_samples=20, eval_points=20, gap_points=20, vamp_components=5,
                  mnist_valid_size=10, train=dict(NETWORK, hidden=(16,), latent_dim=2, epochs=1),
                  rows=("VAE k=1", "IWAE k=5", "VampPrior VAE k=1")),
    "small": dict(**VAMP, seeds=[0, 1, 2], num_samples=5000, eval_points=None, gap_points=2000, vamp_components=500,
                  mnist_valid_size=None, eval_batch_size=20, train=dict(NETWORK, epochs=3)),
    "medium": dict(**VAMP, seeds=[0], num_samples=5000, eval_points=None, gap_points=2000, vamp_components=500,
                   mnist_valid_size=None, curve_points=1000, target_epochs=3280,
                   train=dict(NETWORK, lr_schedule="iwae")),
    "full": dict(**VAMP, seeds=[0, 1, 2], num_samples=5000, eval_points=None, gap_points=10000, vamp_components=500,
                 mnist_valid_size=None, train=dict(NETWORK, epochs=3280, lr_schedule="iwae")),
}


def configs(budget: Dict, out_dir: Path, data_dir: Optional[str], download: bool):
    """``(binarization, name, seed, config)`` of every run of ``budget``, rows in priority order."""
    rows = budget.get("rows", tuple(ROWS))
    for seed in budget["seeds"]:
        for binarization, data in BINARIZATIONS.items():
            extra = dict(data, **data_settings(data_dir, download))
            if data["dataset"] == "mnist" and budget["mnist_valid_size"] is not None:
                extra["valid_size"] = budget["mnist_valid_size"]
            for name in rows:
                settings, where = ROWS[name]
                if binarization not in where:
                    continue
                components = ({"prior_components": budget["vamp_components"], **budget.get("vamp_train", {})}
                              if settings.get("prior") == "vamp" else {})
                run_dir = out_dir / "runs" / f"{binarization}-{run_slug(name)}-seed{seed}"
                yield binarization, name, seed, TrainConfig(
                    seed=seed, out=str(run_dir), **{**budget["train"], **extra, **settings, **components})


def published(binarization: str, name: str, epochs: Optional[float]) -> tuple:
    """The paper's value (``†`` for the static values taken from reproductions) and our fraction of its epochs."""
    value, paper_epochs = PUBLISHED.get((binarization, name), (None, None))
    if value is None:
        return "—", "—"
    mark = " †" if binarization == "static" and "Vamp" not in name else ""
    return f"{value:.2f}{mark}", ("—" if epochs is None else f"{epochs / paper_epochs:.4f} ({epochs:g}/{paper_epochs})")


def run(budget_name: str, out_dir: Path, command: str, revision: str, data_dir: Optional[str] = None,
        download: bool = False, hours: Optional[float] = None, rows: Optional[List[str]] = None) -> Dict:
    budget = BUDGETS[budget_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = list(configs(budget, out_dir, data_dir, download))
    if "target_epochs" in budget:
        return staged.run(budget_name, budget, runs, out_dir, command, revision, hours, PUBLISHED, published,
                          "\n".join(f"* {s}" for s in PUBLISHED_SOURCES), rows)
    records = []
    for binarization, name, seed, config in runs:
        record = run_one(name, seed, config, budget["num_samples"], Path(config.out), eval_points=budget["eval_points"],
                         train_gap="random", gap_points=budget["gap_points"], revision=revision, budget=budget_name,
                         eval_batch_size=budget.get("eval_batch_size"))
        record.update(group=binarization, gap=record["train_log_px"] - record["log_px"])
        records.append(record)
        print(f"{binarization}: {name:<18s} seed {seed}: test log p(x) = {record['log_px']:.2f} ± "
              f"{record['log_px_se']:.2f}, gap {record['gap']:.2f}, active units {record['active_units']}", flush=True)
    labelled = [dict(r, name=f"{r['group']}: {r['name']}") for r in records]
    names = list(dict.fromkeys(r["name"] for r in labelled))
    table = summarize(labelled, names, keys=("log_px", "elbo", "gap", "active_units"))
    epochs = budget["train"]["epochs"]
    rows = []
    for label, row in table.items():
        binarization, name = label.split(": ", 1)
        value, fraction = published(binarization, name, epochs)
        rows.append((binarization, name, epochs, format_mean_se(row["log_px"]), value, fraction,
                     f"{row['elbo'][0]:.2f}", f"{row['active_units'][0]:.1f}", f"{row['gap'][0]:.2f}"))
    points = "all test points" if budget["eval_points"] is None else f"{budget['eval_points']} strided test points"
    train = budget["train"]
    network = "-".join(str(n) for n in (784, *train["hidden"], train["latent_dim"]))
    description = (f"Network {network} {train['activation']}, batch {train['batch_size']}, Adam lr {train['lr']}, "
                   f"{epochs} epochs; seeds {budget['seeds']}; "
                   f"test log p(x) by importance sampling, S = {budget['num_samples']}, on {points}"
                   f"{describe_chunking(budget)}, mean ± standard error over seeds; gap = log p(x) on "
                   f"{budget['gap_points']} random training points minus test. "
                   f"VampPrior: K = {budget['vamp_components']} pseudo-inputs "
                   f"{budget.get('vamp_network', 'on the same network')}.\n\nSources:\n"
                   + "\n".join(f"* {s}" for s in PUBLISHED_SOURCES))
    write_table(out_dir, f"Binarized MNIST study ({budget_name} budget)", command, description,
                ("binarization", "objective", "epochs", "test log p(x)", "published", "fraction of its epochs",
                 "test ELBO", "active units", "train - test gap"), rows, records)
    write_metrics(out_dir, command, budget_name, budget["seeds"], table, labelled)
    plot_study(labelled, table, out_dir / "binarized_mnist.png", f"test log p(x), S = {budget['num_samples']} (nats)",
               f"Binarized MNIST ({budget_name} budget)")
    return table
