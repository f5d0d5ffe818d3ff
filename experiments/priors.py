"""Prior study: standard normal vs mixture of Gaussians vs VampPrior at the same architecture and budget.

For each prior and seed: train with ``pyro_vae.training.train`` (Trace_ELBO, the default MLP, early
stopping on the validation ELBO), then estimate the test log p(x) of the best model by importance sampling
(``pyro_vae.evaluate``).  Writes ``table.md`` (mean ± standard error over seeds), ``metrics.json`` (every
run, the command, the git revision, the seeds) and ``priors.png`` to the output folder.  Finished runs are
kept and skipped when the study is run again (resumable); a run stopped mid-way resumes from its checkpoint.

Expected from the literature (Tomczak & Welling 2018): VampPrior >= MoG >= standard.
"""
import json
import math
import statistics
from pathlib import Path
from typing import Dict, List

import torch

from pyro_vae.data import load_dataset
from pyro_vae.evaluation import evaluate
from pyro_vae.training import CHECKPOINT, SUMMARY, TrainConfig, load_vae, train

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


def run_one(prior: str, seed: int, budget: Dict, out: Path) -> Dict:
    config = TrainConfig(prior=prior, prior_components=budget["components"].get(prior, 10), seed=seed,
                         out=str(out), **budget["train"])
    record_path = out / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    summary_path = out / SUMMARY
    if not summary_path.exists():
        train(config, resume=(out / CHECKPOINT).exists(), progress=False, figures=False)
    vae, config = load_vae(out)
    data = load_dataset(config.dataset, config.data_dir, config.resolved_binarize(), config.valid_size, config.seed)
    torch.manual_seed(seed)
    result = evaluate(vae.model, vae.guide, data.test, num_samples=budget["num_samples"])
    record = {"prior": prior, "seed": seed, "log_px": result.mean, "log_px_se": result.stderr,
              "elbo": result.elbo, "active_units": result.active_units,
              "train_summary": json.loads(summary_path.read_text()), "config": config.to_dict()}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def summarize(records: List[Dict]) -> Dict[str, Dict]:
    table = {}
    for prior in PRIORS:
        runs = [r for r in records if r["prior"] == prior]
        if not runs:
            continue
        values = [r["log_px"] for r in runs]
        elbos = [r["elbo"] for r in runs]
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        table[prior] = {"log_px": statistics.mean(values), "log_px_se_over_seeds": se,
                        "elbo": statistics.mean(elbos),
                        "active_units": statistics.mean(r["active_units"] for r in runs), "seeds": len(runs)}
    return table


def write_outputs(records, table, budget_name, budget, out_dir: Path, command: str, revision: str) -> None:
    from pyro_vae.plots import _new_figure, _save
    lines = [f"# Prior study ({budget_name} budget)", "",
             f"Command: `{command}`  ", f"Revision: `{revision}`  ",
             f"Data: {budget['train'].get('dataset', 'digits')}; seeds {budget['seeds']}; "
             f"test log p(x) by importance sampling with S = {budget['num_samples']}; "
             f"mean ± standard error over seeds (nats, higher is better).", "",
             "| prior | components | test log p(x) | test ELBO | active units |", "|---|---|---|---|---|"]
    for prior, row in table.items():
        lines.append(f"| {prior} | {budget['components'].get(prior, '-')} | {row['log_px']:.2f} ± "
                     f"{row['log_px_se_over_seeds']:.2f} | {row['elbo']:.2f} | {row['active_units']:.1f} |")
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps({"command": command, "revision": revision,
                                                      "budget": budget_name, "seeds": budget["seeds"],
                                                      "summary": table, "runs": records}, indent=1) + "\n")
    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, prior in enumerate(table):
        runs = [r["log_px"] for r in records if r["prior"] == prior]
        ax.scatter([i] * len(runs), runs, color="tab:gray", s=14, zorder=3, label="seeds" if i == 0 else None)
        ax.errorbar([i], [table[prior]["log_px"]], yerr=[table[prior]["log_px_se_over_seeds"]], fmt="o",
                    color="tab:blue", capsize=6, zorder=4, label="mean ± SE" if i == 0 else None)
    ax.set_xticks(range(len(table)), list(table))
    ax.set_ylabel(f"test log p(x), S = {budget['num_samples']} (nats)")
    ax.set_title(f"Priors on {budget['train'].get('dataset', 'digits')} ({budget_name} budget)")
    ax.legend()
    _save(fig, out_dir / "priors.png", tight=True)


def run(budget_name: str, out_dir: Path, command: str, revision: str) -> Dict[str, Dict]:
    budget = BUDGETS[budget_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in budget["seeds"]:
        for prior in PRIORS:
            record = run_one(prior, seed, budget, out_dir / "runs" / f"{prior}-seed{seed}")
            records.append(record)
            print(f"{prior:<9s} seed {seed}: test log p(x) = {record['log_px']:.2f} ± {record['log_px_se']:.2f}",
                  flush=True)
    table = summarize(records)
    write_outputs(records, table, budget_name, budget, out_dir, command, revision)
    return table
