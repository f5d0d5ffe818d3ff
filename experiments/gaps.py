"""Inference-gap study (Cremer, Li & Duvenaud 2018, Table 2, with the estimators of issue 13): for a VAE and an
IWAE, how far below the gold-standard log p(x) do the ELBO and IWAE_5000 sit, how much of the ELBO's gap is the
encoder's (amortization) and how much the Gaussian family's (approximation), and how far to trust AIS.

Per model and seed, on evaluation points taken with a stride through the test set (Larochelle's binarized
MNIST test file is sorted by digit):

* ELBO[q], ELBO[q*] (q* = per-point diagonal Gaussians fitted by Adam from the encoder's output), IWAE_S, and
  AIS log p(x) (HMC, sigmoid schedule, from the guide): :func:`pyro_vae.inference_gaps`;
* the BDMC gap on points simulated from the model at the same number of AIS steps (:func:`pyro_vae.bdmc`): an
  upper bound on AIS's own error for data like the model's.

``smoke`` runs on the embedded 8x8 digits in seconds (numbers meaningless); ``small`` and ``full`` on Larochelle's
binarized MNIST (``--data-dir`` with ``binarized_mnist_*.amat[.gz]``), the paper's 784-200-200-50 tanh network.
"""
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import torch

from pyro_vae import bdmc, inference_gaps
from pyro_vae.checkpoint import CHECKPOINT, SUMMARY
from pyro_vae.config import TrainConfig
from pyro_vae.data import evaluation_indices
from pyro_vae.factory import config_dataset, load_vae
from pyro_vae.gaps import ROWS
from pyro_vae.launch import train
from pyro_vae.signals import say

from .common import (data_settings, format_mean_se, kept_record, machine, mean_se,
                     run_settings,
                     write_metrics, write_table)

OBJECTIVES = {"VAE": dict(loss="elbo", num_particles=1), "IWAE k=5": dict(loss="iwae", num_particles=5)}
MNIST_NETWORK = dict(dataset="binarized-mnist", binarize="none", hidden=(200, 200), latent_dim=50,
                     activation="tanh", batch_size=100, lr=1e-3)

BUDGETS: Dict[str, Dict] = {
    # seconds, for CI: the pipeline end to end on digits with a tiny network
    "smoke": dict(seeds=[0], eval_points=8, num_samples=200, elbo_samples=100, ais_steps=30, num_chains=4,
                  leapfrog_steps=2, optimal_steps=100, bdmc_points=4,
                  train=dict(dataset="digits", hidden=(16,), latent_dim=2, epochs=1, patience=0)),
    # binarized MNIST on a CPU (not yet run: hours on 2 cores, most of it AIS and BDMC): 20 epochs, 3 seeds,
    # 100 test points, IWAE_5000, AIS and BDMC at 1000 steps x 16 chains
    "small": dict(seeds=[0, 1, 2], eval_points=100, num_samples=5000, elbo_samples=1000, ais_steps=1000,
                  num_chains=16, leapfrog_steps=10, optimal_steps=1000, bdmc_points=20,
                  train=dict(MNIST_NETWORK, epochs=20, patience=0)),
    # a GPU: 1000 test points, a longer training
    "full": dict(seeds=[0, 1, 2], eval_points=1000, num_samples=5000, elbo_samples=1000, ais_steps=1000,
                 num_chains=16, leapfrog_steps=10, optimal_steps=1000, bdmc_points=100,
                 train=dict(MNIST_NETWORK, epochs=500, patience=0)),
}
EXTRA = ("bdmc_gap", "bdmc_lower", "bdmc_upper")


def run_one(name: str, seed: int, budget: Dict, out: Path, revision: str, data_dir: Optional[str],
            download: bool = False, budget_name: Optional[str] = None) -> Dict:
    record_path = out / "record.json"
    config = TrainConfig(seed=seed, out=str(out), **{**budget["train"], **data_settings(data_dir, download),
                                                     **OBJECTIVES[name]})
    evaluation = {k: v for k, v in budget.items() if k not in ("train", "seeds")}
    settings = run_settings(config, budget=budget_name, seed=seed, **evaluation)
    kept = kept_record(record_path, settings)
    if kept is not None:
        return kept
    if not (out / SUMMARY).exists():
        say(f"{name}, seed {seed}: training {config.epochs} epochs")
        train(config, resume=(out / CHECKPOINT).exists(), progress=False, figures=False)
    vae, config = load_vae(out)
    data = config_dataset(config, download=config.download)
    x = data.test[evaluation_indices(len(data.test), budget["eval_points"])]
    torch.manual_seed(seed)
    say(f"{name}, seed {seed}: ELBO, q*, IWAE_{budget['num_samples']} and AIS on {len(x)} test points, "
        f"then BDMC on {budget['bdmc_points']} simulated points")
    gaps = inference_gaps(vae.model, vae.guide, x, num_samples=budget["num_samples"],
                          elbo_samples=budget["elbo_samples"], ais_steps=budget["ais_steps"],
                          num_chains=budget["num_chains"], leapfrog_steps=budget["leapfrog_steps"],
                          optimal_steps=budget["optimal_steps"], progress=True)
    sandwich = bdmc(vae.model, vae.guide, budget["bdmc_points"], like=x[:1], num_steps=[budget["ais_steps"]],
                    num_chains=budget["num_chains"], leapfrog_steps=budget["leapfrog_steps"], num_samples=0,
                    progress=True)
    bounds = sandwich.bounds[-1]
    record = {"name": name, "seed": seed, "revision": revision, "machine": machine(), "settings": settings, "config": config.to_dict(),
              "eval_points": x.shape[0], **gaps.means, "stderrs": gaps.stderrs, "mc_stderrs": gaps.mc_stderrs,
              "optimal_steps": gaps.optimal_steps, "converged": gaps.converged,
              "bdmc_gap": bounds.gap_mean, "bdmc_gap_stderr": bounds.gap_stderr, "bdmc_lower": bounds.lower_mean,
              "bdmc_upper": bounds.upper_mean}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


LABELS = {"log_px": "log p(x) (AIS)", "iwae": "IWAE_S", "elbo_optimal": "ELBO[q*]", "elbo": "ELBO[q]",
          "approximation_gap": "approximation gap", "amortization_gap": "amortization gap",
          "inference_gap": "inference gap", "bdmc_gap": "BDMC gap (simulated data)"}


def run(budget_name: str, out_dir: Path, command: str, revision: str, data_dir: Optional[str] = None,
        download: bool = False) -> Dict:
    from pyro_vae.bound_plots import plot_inference_gaps
    budget = BUDGETS[budget_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    records: List[Dict] = []
    for seed in budget["seeds"]:
        for name in OBJECTIVES:
            run_dir = out_dir / "runs" / f"{name.replace(' ', '_').replace('=', '')}-seed{seed}"
            record = run_one(name, seed, budget, run_dir, revision, data_dir, download, budget_name)
            records.append(record)
            print(f"{name:<9s} seed {seed}: log p(x) {record['log_px']:.2f}, IWAE {record['iwae']:.2f}, ELBO "
                  f"{record['elbo']:.2f}, gaps: approximation {record['approximation_gap']:.2f}, amortization "
                  f"{record['amortization_gap']:.2f}; BDMC gap {record['bdmc_gap']:.3f}", flush=True)
    keys = ROWS + EXTRA
    table = {name: {key: mean_se(r[key] for r in records if r["name"] == name) for key in keys} for name in OBJECTIVES}
    labels = dict(LABELS, iwae=f"IWAE_{budget['num_samples']}",
                  log_px=f"log p(x) (AIS, {budget['ais_steps']} steps x {budget['num_chains']} chains)",
                  bdmc_gap=f"BDMC gap at {budget['ais_steps']} steps ({budget['bdmc_points']} simulated points)")
    rows = [[labels[key]] + [format_mean_se(table[name][key]) for name in OBJECTIVES]
            for key in ROWS + ("bdmc_gap",)]
    settings = budget["train"]
    description = (f"Data: {settings['dataset']}; network {settings['hidden']} {settings.get('activation', 'relu')}, "
                   f"latent {settings['latent_dim']}; {settings['epochs']} epochs; seeds {budget['seeds']}; "
                   f"{budget['eval_points']} test points taken with a stride. Rows as in Cremer et al. 2018, Table 2: "
                   f"log p(x) by AIS (HMC, {budget['leapfrog_steps']} leapfrog steps, sigmoid schedule, from the "
                   f"guide), IWAE with the amortized guide, ELBO under q* (per-point diagonal Gaussians, at most "
                   f"{budget['optimal_steps']} Adam steps from the encoder's output) and under q ({budget['elbo_samples']} "
                   f"draws each); the gaps are paired per point. Last row: BDMC on points simulated from the model. "
                   f"Mean ± standard error over seeds (nats, per point).")
    write_table(out_dir, f"Inference gaps ({budget_name} budget)", command, description,
                ["", *OBJECTIVES], rows, records)
    write_metrics(out_dir, command, budget_name, budget["seeds"], table, records)
    names = list(OBJECTIVES)
    plot_inference_gaps(names, [table[n]["approximation_gap"][0] for n in names],
                        [table[n]["amortization_gap"][0] for n in names], out_dir / "gaps.png",
                        [0 if math.isnan(table[n]["approximation_gap"][1]) else table[n]["approximation_gap"][1]
                         for n in names],
                        [0 if math.isnan(table[n]["amortization_gap"][1]) else table[n]["amortization_gap"][1]
                         for n in names],
                        title=f"Inference gaps on {settings['dataset']} ({budget_name} budget)")
    return table
