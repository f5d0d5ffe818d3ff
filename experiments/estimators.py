"""Estimator study, Table 1 of the IWAE paper (Burda et al. 2016) in miniature.

One stochastic layer, 784-200-200-50 MLP with tanh as in the paper, on dynamically binarized
Fashion-MNIST (Debian's dataset-fashion-mnist package, offline).  Compared at the same budget:
the VAE (Trace_ELBO with k particles) and IWAE with k particles, standard and DReG gradients.
Beside them, the paper's second architecture (two stochastic layers, ``pyro_vae.examples.two_layer``:
784-(200,200)-100-(100,100)-50, tanh) trained with IWAE, standard and DReG gradients (DReG through both
levels of q(z1 | x) q(z2 | z1)).
Reported: test log p(x) (S = 5000), the train/test gap (log p(x) on training points minus test),
and active units (for the two-layer rows: of z1 and z2 together, E_q[z2 | x] averaged over z1).  The paper's shape to compare with: IWAE_k beats VAE_k by more as k grows, and IWAE keeps
more active units.
"""
from pathlib import Path
from typing import Dict, List, Optional

from pyro_vae.training import TrainConfig

from .common import (data_settings, describe_chunking, format_mean_se, plot_study, run_one, summarize, write_metrics,
                     write_table)

ARCHITECTURE = dict(dataset="fashion-mnist", binarize="dynamic", hidden=(200, 200), latent_dim=50,
                    activation="tanh", batch_size=100, lr=1e-3)


TWO_LAYER = "pyro_vae.examples.two_layer:TwoLayerVAE"


def variants(ks, two_layer_args=None):
    """The compared objectives; with ``two_layer_args`` (the two-layer model's extra arguments) also the
    two-layer IWAE rows for every k > 1."""
    out = {}
    for k in ks:
        out[f"VAE k={k}"] = dict(loss="elbo", num_particles=k)
        out[f"IWAE k={k}"] = dict(loss="iwae", num_particles=k) if k > 1 else None
        out[f"IWAE-DReG k={k}"] = dict(loss="iwae", num_particles=k, gradient="dreg") if k > 1 else None
    for k in ks if two_layer_args is not None else ():
        for name, gradient in (("IWAE", "standard"), ("IWAE-DReG", "dreg")):
            if k > 1:
                out[f"2-layer {name} k={k}"] = dict(model=TWO_LAYER, model_args=dict(two_layer_args), loss="iwae",
                                                   num_particles=k, gradient=gradient)
    return {name: v for name, v in out.items() if v is not None}


BUDGETS: Dict[str, Dict] = {
    # seconds, for CI: digits and a tiny network; proves the pipeline, numbers meaningless
    "smoke": dict(seeds=[0], ks=[1, 2], num_samples=20, eval_points=50, two_layer_args=dict(latent1_dim=4, hidden2=[8]),
                  train=dict(dataset="digits", hidden=(16,), latent_dim=2, epochs=1, patience=0)),
    # k in {1, 5} (k = 50 does not fit a CPU), 3 epochs of Fashion-MNIST; log p(x) with S = 5000 on all 10,000
    # test points and as many random training points (the train/test gap), in chunks of 20 points: ~4 hours on
    # 2 CPU cores, nearly all of it the 36 evaluations; resumable run by run (each run's record is committed)
    "small": dict(seeds=[0, 1, 2], ks=[1, 5], num_samples=5000, eval_points=None, train_gap="random",
                  eval_batch_size=20, two_layer_args={}, train=dict(ARCHITECTURE, epochs=3, patience=0)),
    # the paper's setting (GPU): k in {1, 5, 50}, 3^8 passes schedule approximated by 3280 epochs
    "full": dict(seeds=[0, 1, 2], ks=[1, 5, 50], num_samples=5000, eval_points=None, two_layer_args={},
                 train=dict(ARCHITECTURE, epochs=3280, patience=0, lr_schedule="exponential", lr_gamma=0.999)),
}


def run_slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "")


def train_and_evaluate(budget: Dict, out_dir: Path, names: Dict[str, Dict], revision: str,
                       extra: Optional[Dict] = None, group: Optional[str] = None,
                       budget_name: Optional[str] = None) -> List[Dict]:
    """Every (seed, objective) run of ``budget``: train (resumably), then log p(x) on test and training
    points.  ``extra`` overrides the budget's training settings (data set, data folder); ``group`` tags
    the records and prefixes the run folders (one study comparing several data sets)."""
    records = []
    for seed in budget["seeds"]:
        for name, objective in names.items():
            run_dir = out_dir / "runs" / ((f"{group}-" if group else "") + run_slug(name) + f"-seed{seed}")
            config = TrainConfig(seed=seed, out=str(run_dir), **{**budget["train"], **(extra or {}), **objective})
            record = run_one(name, seed, config, budget["num_samples"], run_dir,
                             eval_points=budget["eval_points"], train_gap=budget.get("train_gap", "strided"),
                             revision=revision, budget=budget_name, eval_batch_size=budget.get("eval_batch_size"))
            record["gap"] = record["train_log_px"] - record["log_px"]
            if group:
                record["group"] = group
            records.append(record)
            print(f"{(group + ': ') if group else ''}{name:<16s} seed {seed}: test log p(x) = {record['log_px']:.2f}, "
                  f"gap {record['gap']:.2f}, active units {record['active_units']}", flush=True)
    return records


def describe_budget(budget: Dict, data: str) -> str:
    train = budget["train"]
    points = (f"{budget['eval_points']} test points strided over the test set" if budget["eval_points"]
              else "all test points")
    return (f"Data: {data}; network {train.get('hidden')} {train.get('activation', 'relu')}, latent "
            f"{train.get('latent_dim')}, batch {train.get('batch_size', 100)}; {train.get('epochs')} epochs; "
            f"seeds {budget['seeds']}; log p(x) by importance sampling, S = {budget['num_samples']}, on "
            f"{points}{describe_chunking(budget)}; gap = log p(x) on as many training points minus test; mean ± "
            f"standard error over seeds.")


def run(budget_name: str, out_dir: Path, command: str, revision: str, data_dir: Optional[str] = None,
        download: bool = False) -> Dict[str, Dict]:
    budget = BUDGETS[budget_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    names = variants(budget["ks"], budget.get("two_layer_args"))
    records = train_and_evaluate(budget, out_dir, names, revision, extra=data_settings(data_dir, download),
                                 budget_name=budget_name)
    table = summarize(records, names, keys=("log_px", "elbo", "gap", "active_units"))
    data = budget["train"]["dataset"]
    rows = [(name, format_mean_se(row['log_px']), f"{row['elbo'][0]:.2f}",
             f"{row['gap'][0]:.2f}", f"{row['active_units'][0]:.1f}") for name, row in table.items()]
    description = describe_budget(budget, f"{data}, dynamically binarized")
    two_layer = budget.get("two_layer_args")
    if two_layer is not None:
        changed = f", with {two_layer}" if two_layer else ""
        description += (f" 2-layer rows: `{TWO_LAYER}`, two stochastic layers z2 -> z1 -> x (784-(200,200)-100-"
                        f"(100,100)-50, tanh{changed}); their active units count the units of z1 and z2 "
                        f"together, with E_q[z2 | x] averaged over draws of z1.")
    write_table(out_dir, f"Estimator study ({budget_name} budget)", command, description,
                ("objective", "test log p(x)", "test ELBO", "train - test gap", "active units"), rows, records)
    write_metrics(out_dir, command, budget_name, budget["seeds"], table, records)
    plot_study(records, table, out_dir / "estimators.png", f"test log p(x), S = {budget['num_samples']} (nats)",
               f"VAE vs IWAE on {data} ({budget_name} budget)")
    return table
