"""Prior study: standard normal vs mixture of Gaussians vs VampPrior at the same architecture and budget.

For each prior and seed: train with ``pyro_vae.launch.train`` (Trace_ELBO, the default MLP, early
stopping on the validation ELBO), then estimate the test log p(x) of the best model by importance sampling
(``pyro_vae.evaluate``).  Writes ``table.md`` (mean ± standard error over seeds), ``metrics.json`` (every
run, the command, the git revision, the seeds) and ``priors.png`` to the output folder.  Finished runs are
kept and skipped when the study is run again (resumable); a run stopped mid-way resumes from its checkpoint.

Expected from the literature (Tomczak & Welling 2018): VampPrior >= MoG >= standard.
"""
from pathlib import Path
from typing import Dict, Optional

from pyro_vae.training import TrainConfig

from .common import data_settings, format_mean_se, plot_study, run_one, summarize, write_metrics, write_table

PRIORS = ("standard", "mog", "vamp")

# Each budget fixes everything but the prior: the same data, network, epochs and S for all three.
BUDGETS: Dict[str, Dict] = {
    # seconds, for CI: proves the pipeline end to end, numbers meaningless
    "smoke": dict(seeds=[0], num_samples=20, train=dict(epochs=1, hidden=(16,), latent_dim=2, patience=0),
                  components={"mog": 3, "vamp": 10}),
    # ~15 min on 2 CPU cores: digits, the default network, up to 300 epochs with early stopping, S = 5000
    "small": dict(seeds=[0, 1, 2], num_samples=5000, train=dict(epochs=300, patience=20),
                  components={"mog": 10, "vamp": 100}),
    # the paper-scale setting (GPU): dynamically binarized Fashion-MNIST, 784-300-300-40 as in the VampPrior paper
    "full": dict(seeds=[0, 1, 2], num_samples=5000,
                 train=dict(dataset="fashion-mnist", hidden=(300, 300), latent_dim=40, epochs=2000, patience=50,
                            warmup_epochs=100, batch_size=100, lr=5e-4),
                 components={"mog": 500, "vamp": 500}),
}


def write_outputs(records, table, budget_name, budget, out_dir: Path, command: str, title: str = "Prior study") -> None:
    data = budget.get("data", budget["train"].get("dataset", "digits"))
    points = "all test points" if budget.get("eval_points") is None else f"{budget['eval_points']} strided test points"
    description = (f"Data: {data}; {budget.get('network', 'the default MLP')}; seeds {budget['seeds']}; "
                   f"test log p(x) by importance sampling with S = {budget['num_samples']} on {points}; "
                   f"mean ± standard error over seeds (nats, higher is better).")
    rows = [(prior, budget["components"].get(prior, "-"), format_mean_se(row['log_px']),
             f"{row['elbo'][0]:.2f}", f"{row['active_units'][0]:.1f}") for prior, row in table.items()]
    write_table(out_dir, f"{title} ({budget_name} budget)", command, description,
                ("prior", "components", "test log p(x)", "test ELBO", "active units"), rows, records)
    write_metrics(out_dir, command, budget_name, budget["seeds"], table, records)
    plot_study(records, table, out_dir / "priors.png", f"test log p(x), S = {budget['num_samples']} (nats)",
               f"Priors on {data} ({budget_name} budget)")


def run(budget_name: str, out_dir: Path, command: str, revision: str, data_dir: Optional[str] = None,
        download: bool = False) -> Dict[str, Dict]:
    return run_budget(budget_name, BUDGETS[budget_name], out_dir, command, revision, data_dir, download)


def run_budget(budget_name: str, budget: Dict, out_dir: Path, command: str, revision: str,
               data_dir: Optional[str] = None, download: bool = False, title: str = "Prior study") -> Dict[str, Dict]:
    """Train and score every (seed, prior) of ``budget`` into ``out_dir`` and write its outputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in budget["seeds"]:
        for prior in PRIORS:
            run_dir = out_dir / "runs" / f"{prior}-seed{seed}"
            config = TrainConfig(prior=prior, prior_components=budget["components"].get(prior, 10), seed=seed,
                                 out=str(run_dir), **budget["train"], **data_settings(data_dir, download))
            record = run_one(prior, seed, config, budget["num_samples"], run_dir, revision=revision,
                             budget=budget_name, eval_points=budget.get("eval_points"))
            record.setdefault("name", record.get("prior", prior))
            records.append(record)
            print(f"{prior:<9s} seed {seed}: test log p(x) = {record['log_px']:.2f} ± {record['log_px_se']:.2f}",
                  flush=True)
    table = summarize(records, PRIORS)
    write_outputs(records, table, budget_name, budget, out_dir, command, title)
    return table
