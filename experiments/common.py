"""What every study shares: train one configuration (resumably), estimate its held-out log p(x) by
importance sampling, record it, and summarise runs over seeds as mean ± standard error."""
import json
import math
import statistics
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from pyro_vae.evaluation import evaluate
from pyro_vae.checkpoint import CHECKPOINT, SUMMARY
from pyro_vae.config import TrainConfig
from pyro_vae.factory import config_dataset, load_vae
from pyro_vae.launch import train


def data_settings(data_dir: Optional[str] = None, download: bool = False) -> Dict:
    """The data settings a study passes on to every run's config: only those given, so runs made without
    them keep their configs."""
    return {**({"data_dir": data_dir} if data_dir else {}), **({"download": True} if download else {})}


def evaluation_indices(n_rows: int, eval_points: Optional[int]) -> torch.Tensor:
    """Which of ``n_rows`` points to evaluate: ``eval_points`` of them spread evenly over the whole split,
    rows ``(i * n_rows) // eval_points`` for ``i < eval_points`` (every (n_rows / eval_points)-th row), or all
    rows when ``eval_points`` is None or not smaller than ``n_rows``.

    Never the first ``eval_points``: a split sorted by class would be measured on one class. Larochelle's
    binarized-MNIST test file is sorted by digit (its first 1000 rows are zeros, whose log p(x) is several
    nats higher than the average digit's).

    Returns:
        ``[M]`` int64 indices, increasing, ``M = min(eval_points, n_rows)``.
    """
    if eval_points is None or eval_points >= n_rows:
        return torch.arange(n_rows)
    return torch.arange(eval_points) * n_rows // eval_points


def run_one(name: str, seed: int, config: TrainConfig, num_samples: int, out: Path,
            eval_points: Optional[int] = None, train_gap: bool = False, revision: Optional[str] = None) -> Dict:
    """Train ``config`` into ``out`` (resuming a stopped run, skipping a finished one) and estimate the
    best model's test log p(x) with S = ``num_samples`` on ``eval_points`` test points spread evenly over
    the test set (:func:`evaluation_indices`; all by default); with ``train_gap``, also on as many training
    points, chosen the same way (the train/test gap; the Burda et al. overfitting measure).  ``revision``
    (the code's git revision) is stored in the record, so a table rebuilt later from kept runs still says
    which code made its numbers."""
    record_path = out / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    if not (out / SUMMARY).exists():
        train(config, resume=(out / CHECKPOINT).exists(), progress=False, figures=False)
    vae, config = load_vae(out)
    data = config_dataset(config, download=config.download)
    record = {"name": name, "seed": seed, "revision": revision, "config": config.to_dict(),
              "train_summary": json.loads((out / SUMMARY).read_text())}
    # training points as the model saw them in its first epoch (dynamic binarization resamples them)
    train_points = data.train_epoch(0, config.seed) if data.binarize == "dynamic" else data.train
    splits = [("test", data.test)] + ([("train", train_points)] if train_gap else [])
    for split, x in splits:
        x = x[evaluation_indices(len(x), eval_points)]
        torch.manual_seed(seed)
        result = evaluate(vae.model, vae.guide, x, num_samples=num_samples)
        prefix = "" if split == "test" else "train_"
        record.update({prefix + "log_px": result.mean, prefix + "log_px_se": result.stderr,
                       prefix + "elbo": result.elbo})
        if split == "test":
            record.update(active_units=result.active_units, iwae_curve=result.iwae_curve,
                          eval_points=len(x))
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def mean_se(values: Iterable[float]):
    values = list(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.mean(values), se


def format_mean_se(pair) -> str:
    """``mean ± se`` for a table cell; a single seed has no standard error and shows ``± —``."""
    mean, se = pair
    return f"{mean:.2f} ± {'—' if math.isnan(se) else f'{se:.2f}'}"


def summarize(records: List[Dict], names: Iterable[str], keys=("log_px", "elbo", "active_units")) -> Dict:
    table = {}
    for name in names:
        runs = [r for r in records if r["name"] == name]
        if runs:
            table[name] = {key: mean_se(r[key] for r in runs) for key in keys if key in runs[0]}
            table[name]["seeds"] = len(runs)
    return table


def plot_study(records: List[Dict], table: Dict, path: Path, ylabel: str, title: str) -> None:
    from pyro_vae.plots import new_figure, save_figure
    fig = new_figure((max(6.0, 1.3 * len(table)), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, name in enumerate(table):
        runs = [r["log_px"] for r in records if r["name"] == name]
        mean, se = table[name]["log_px"]
        ax.scatter([i] * len(runs), runs, color="tab:gray", s=14, zorder=3, label="seeds" if i == 0 else None)
        ax.errorbar([i], [mean], yerr=[se], fmt="o", color="tab:blue", capsize=6, zorder=4,
                    label="mean ± SE" if i == 0 else None)
    ax.set_xticks(range(len(table)), list(table), rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path, tight=True)


def write_table(out_dir: Path, title: str, command: str, revision: str, description: str, columns, rows,
                records: Iterable[Dict] = ()) -> None:
    """``table.md``: a title, the command and revision that wrote it (and those that made its runs, when
    kept runs from earlier invocations were reused), what was measured, and a markdown table."""
    run_revisions = sorted({r["revision"] for r in records if r.get("revision")} - {revision})
    made = f"; runs kept from revision(s) {', '.join(f'`{r}`' for r in run_revisions)}" if run_revisions else ""
    lines = [f"# {title}", "", f"Command: `{command}`  ", f"Revision: `{revision}`{made}  ", description, "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")


def write_metrics(out_dir: Path, command: str, revision: str, budget_name: str, seeds, table, records) -> None:
    (out_dir / "metrics.json").write_text(json.dumps({"command": command, "revision": revision,
                                                      "budget": budget_name, "seeds": seeds,
                                                      "summary": table, "runs": records}, indent=1) + "\n")
