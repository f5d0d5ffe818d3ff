"""What every study shares: train one configuration (resumably), estimate its held-out log p(x) by
importance sampling, record it, and summarise runs over seeds as mean ± standard error."""
import json
import math
import statistics
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from pyro_vae.data import evaluation_indices
from pyro_vae.evaluation import evaluate
from pyro_vae.checkpoint import CHECKPOINT, SUMMARY
from pyro_vae.config import TrainConfig
from pyro_vae.factory import config_dataset, load_vae
from pyro_vae.launch import train


def data_settings(data_dir: Optional[str] = None, download: bool = False) -> Dict:
    """The data settings a study passes on to every run's config: only those given, so runs made without
    them keep their configs."""
    return {**({"data_dir": data_dir} if data_dir else {}), **({"download": True} if download else {})}


class StudyError(Exception):
    """A study cannot go on as asked (a kept record made with other settings); the message says what to do."""


# Config fields that say where things are, how fast they run or where they are logged, not what is computed:
# left out of a record's key, so a study moved to another folder, or run with another data folder, keeps its
# records.
# How the studies evaluate: the log weights recorded and compiled by inductor (pyro_vae.compiled), ~40 % faster on
# the CPU than the plain replay and equal to it to float rounding (1e-7 relative), so not part of a record's key.
EVAL_COMPILE = "fused"
# Data points per evaluation chunk (times 500 samples a chunk): the library's default.  Chunks of 20 points
# (10,000 rows, whose decoder output fits the L3 cache) take about a third less time on the 2-core VM
# (benchmarks/RESULTS.md); a budget that asks for them (``eval_batch_size``) keys its records by it.
EVAL_BATCH_SIZE = 100
# Settings a record's key holds only when they differ from these defaults.
SETTING_DEFAULTS = {"eval_batch_size": EVAL_BATCH_SIZE}


def describe_chunking(budget: Dict) -> str:
    """`` (in chunks of N points x 500 samples)`` for a budget that sets its own ``eval_batch_size``, else ``""``."""
    size = budget.get("eval_batch_size")
    return f" (in chunks of {size} points x 500 samples)" if size else ""


NOT_IN_KEY = ("out", "data_dir", "download", "compile", "tensorboard", "tensorboard_images_every")


def run_settings(config: TrainConfig, **evaluation) -> Dict:
    """What a run's numbers depend on: every config field but :data:`NOT_IN_KEY`, and the evaluation's
    settings (budget, seed, S, points), as JSON would store them."""
    values = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_KEY}
    return json.loads(json.dumps({"config": values, **evaluation}))


def differences(saved: Dict, wanted: Dict) -> List[str]:
    """``key: saved -> wanted`` for every setting the saved record holds that differs from the wanted one
    (a record written before records carried settings is compared on what it holds)."""
    saved = {**SETTING_DEFAULTS, **saved}              # a setting left out of a key because it had its default
    out = [f"{k}: {saved[k]!r} -> {wanted[k]!r}" for k in wanted if k != "config" and k in saved
           and saved[k] != wanted[k]]
    old, new = saved.get("config", {}), wanted["config"]
    known = {k: v for k, v in old.items() if k in TrainConfig.__dataclass_fields__}
    old = run_settings(TrainConfig.from_dict(known))["config"]             # as today's config would store it
    return out + [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]


def kept_record(path: Path, settings: Dict) -> Optional[Dict]:
    """The record at ``path`` when it was made with ``settings`` (saying so: the run is served from it);
    None when there is none; a :class:`StudyError` naming the differences when it was made with others."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    saved = record.get("settings") or {"config": record.get("config", {}), "seed": record.get("seed"),
                                       # records of before 2026-12-03 scored the first eval_points points
                                       **({"eval_points": record["eval_points"], "subsets": "first"}
                                          if "eval_points" in record else {}),
                                       **({"train_gap": "strided"} if "train_log_px" in record else {})}
    changed = differences(saved, settings)
    if changed:
        raise StudyError(f"{path} holds a run made with other settings ({'; '.join(changed)}). Delete its folder "
                         f"to rerun it with these, or pass --out for a separate study.")
    print(f"served from records: {path} (made at revision {record.get('revision') or 'unknown'}); delete its "
          f"folder to rerun it", flush=True)
    return record


def random_indices(n_rows: int, count: int, seed: int) -> torch.Tensor:
    """``[min(count, n_rows)]`` distinct rows drawn at random (seeded, in increasing order): the training
    points a train/test gap compares with ``count`` test points."""
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(10_000 + seed))
    return perm[:count].sort().values


def run_one(name: str, seed: int, config: TrainConfig, num_samples: int, out: Path,
            eval_points: Optional[int] = None, train_gap: Optional[str] = None, revision: Optional[str] = None,
            budget: Optional[str] = None, gap_points: Optional[int] = None,
            eval_batch_size: Optional[int] = None) -> Dict:
    """Train ``config`` into ``out`` (resuming a stopped run, skipping a finished one) and score its best
    model (:func:`score`).  ``revision`` (the code's git revision) is stored in the record, so a table rebuilt
    later from kept runs still says which code made its numbers.

    The record is keyed by its settings (:func:`run_settings`: ``budget``, seed, every config field, S and
    the points): a kept record made with these is returned as it is (and the run said to be served from
    records); one made with other settings is an error, never silently reused.  ``eval_batch_size``: data
    points per chunk of the evaluation (default :data:`EVAL_BATCH_SIZE`); another chunking draws other samples,
    so a non-default one enters the key."""
    record_path = out / "record.json"
    settings = run_settings(config, budget=budget, seed=seed, num_samples=num_samples, eval_points=eval_points,
                            train_gap=train_gap, **({"gap_points": gap_points} if gap_points else {}),
                            **({"eval_batch_size": eval_batch_size} if eval_batch_size else {}),
                            **({"subsets": "strided"} if eval_points else {}))
    record = kept_record(record_path, settings)
    if record is not None:
        return record
    if not (out / SUMMARY).exists():
        if train(config, resume=(out / CHECKPOINT).exists(), progress=False, figures=False).stop_reason == "interrupted":
            raise KeyboardInterrupt                # Ctrl-C or SIGTERM: the checkpoint is kept, nothing is scored
    vae, config = load_vae(out)
    chunk = eval_batch_size or EVAL_BATCH_SIZE
    record = {"name": name, "seed": seed, "revision": revision, "machine": machine(), "settings": settings,
              "config": config.to_dict(), "train_summary": json.loads((out / SUMMARY).read_text()),
              "eval_compile": EVAL_COMPILE,
              "eval_batch_size": chunk, **score(vae, config, num_samples, eval_points, train_gap, gap_points, chunk)}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def score(vae, config: TrainConfig, num_samples: int, eval_points: Optional[int] = None,
          train_gap: Optional[str] = None, gap_points: Optional[int] = None,
          eval_batch_size: int = EVAL_BATCH_SIZE) -> Dict:
    """Test log p(x) of a trained model by importance sampling with S = ``num_samples`` on ``eval_points``
    test points spread evenly over the test set (:func:`evaluation_indices`; all by default), with its
    standard error over points, the ELBO, the IWAE_k curve and the active units; with ``train_gap``, also on
    ``gap_points`` training points (default: as many as test points; the train/test gap, the Burda et al.
    overfitting measure): ``"random"`` draws them at random (seeded by the config's seed,
    :func:`random_indices`), ``"strided"`` spreads them evenly over the training set.  ``eval_batch_size``: data
    points per evaluation chunk."""
    data = config_dataset(config, download=config.download)
    # training points as the model saw them in its first epoch (dynamic binarization resamples them)
    train_points = data.train_epoch(0, config.seed) if data.binarize == "dynamic" else data.train
    x_test = data.test[evaluation_indices(len(data.test), eval_points)]
    count = gap_points or len(x_test)
    pick = random_indices if train_gap == "random" else lambda n, m, _: evaluation_indices(n, m)
    splits = [("test", x_test)] + ([("train", train_points[pick(len(train_points), count, config.seed)])]
                                   if train_gap else [])
    record = {}
    for split, x in splits:
        torch.manual_seed(config.seed)
        result = evaluate(vae.model, vae.guide, x, num_samples=num_samples, progress=len(x) * num_samples > 10 ** 6,
                          batch_size=eval_batch_size, compile=EVAL_COMPILE)
        prefix = "" if split == "test" else "train_"
        record.update({prefix + "log_px": result.mean, prefix + "log_px_se": result.stderr,
                       prefix + "elbo": result.elbo})
        if split == "test":
            record.update(active_units=result.active_units, iwae_curve=result.iwae_curve, eval_points=len(x))
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


def run_revisions(records: Iterable[Dict]) -> List[str]:
    """The git revisions that made the runs of a table, in order (a table is a function of its records, so
    running a study again from kept records writes the same files)."""
    return sorted({r.get("revision") or "unknown" for r in records})


def write_table(out_dir: Path, title: str, command: str, description: str, columns, rows,
                records: Iterable[Dict] = ()) -> None:
    """``table.md``: a title, the command that wrote it, the revisions and machines that made its runs, what
    was measured, and a markdown table."""
    records = list(records)
    revisions = ", ".join(f"`{r}`" for r in run_revisions(records))
    machines = "; ".join(sorted({r.get("machine") or "unknown" for r in records}))
    lines = [f"# {title}", "", f"Command: `{command}`  ", f"Runs made at revision(s): {revisions}  ",
             f"Machine(s): {machines}  ", description, "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")


def write_metrics(out_dir: Path, command: str, budget_name: str, seeds, table, records) -> None:
    (out_dir / "metrics.json").write_text(json.dumps({"command": command, "revisions": run_revisions(records),
                                                      "machines": sorted({r.get("machine") or "unknown" for r in records}),
                                                      "budget": budget_name, "seeds": seeds,
                                                      "summary": table, "runs": records}, indent=1) + "\n")


def machine() -> str:
    """The machine the study ran on, for its metrics: processor, core count, torch and Pyro versions."""
    import os
    import platform

    import pyro
    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"pyro {pyro.__version__}, python {platform.python_version()}").replace("  ", " ")
