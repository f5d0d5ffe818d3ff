"""A study trained in stages across sessions (the binarized-MNIST ``medium`` budget): each invocation trains
every run on, for as many hours as it is given, and commits what it reached.

Each run advances milestone by milestone: the ends of the IWAE paper's learning-rate stages (1, 4, 13, 40,
121, 364, 1093, 3280 epochs) and every 100 epochs.  Milestones are taken breadth-first (every run reaches 40
epochs before any trains past it), in the runs' priority order, and a segment is started only when its
estimated time (the run's median seconds per epoch: of this invocation's epochs once there are 3, else of
all of them) fits in what is left of ``--hours``.  Each milestone adds a curve point (test log p(x) with
S = 5000 on ``curve_points`` strided test points); when the time is up, every run whose last full evaluation
is older than its epoch is scored on the full test set (:func:`experiments.common.score`, about 15 minutes a
run on 2 CPU cores, not counted in ``--hours``).

A run's state is its folder, committed for this budget so that the next session resumes it: ``checkpoint.pt``,
``metrics.jsonl`` (the training history) and ``record.json`` (settings, epochs reached, curve, last full
evaluation).  Its settings key leaves out the epochs, which grow; any other change is refused as in
:func:`experiments.common.kept_record`.
"""
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from pyro_vae.checkpoint import CHECKPOINT, METRICS, load_checkpoint
from pyro_vae.data import evaluation_indices
from pyro_vae.evaluation import evaluate
from pyro_vae.factory import config_dataset, load_vae
from pyro_vae.launch import train

from .common import StudyError, differences, machine, run_settings, score, write_metrics, write_table

STAGE_ENDS = (1, 4, 13, 40, 121, 364, 1093, 3280)
CURVE_SECONDS = 120          # a curve point's evaluation, for the time estimate before a run has made one


def milestones(target: int) -> List[int]:
    """The epochs at which a run stops for a curve point: the paper's stage ends and every 100 epochs."""
    return sorted({e for e in STAGE_ENDS if e <= target} | set(range(100, target + 1, 100)))


def load_state(config, settings: Dict) -> Dict:
    """The run's record (checked against ``settings``), or a fresh one."""
    path = Path(config.out) / "record.json"
    if not path.exists():
        return {"settings": settings, "epochs": 0, "curve": [], "final": None}
    state = json.loads(path.read_text())
    changed = differences(state["settings"], settings)
    if changed:
        raise StudyError(f"{path} holds a run made with other settings ({'; '.join(changed)}). Delete its folder "
                         f"to rerun it with these, or pass --out for a separate study.")
    return state


def epoch_history(out: Path) -> List[Dict]:
    """The run's per-epoch rows (``epoch``, ``seconds``, ...): ``metrics.jsonl``, or the checkpoint's history
    where the log is missing (a checkout from before the log was committed); none before the first epoch."""
    path = out / METRICS
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if (out / CHECKPOINT).exists():
        return load_checkpoint(out / CHECKPOINT)["history"]
    return []


def last_epoch(out: Path) -> int:
    """The last epoch the run has trained: ahead of its record's ``epochs`` after a segment was interrupted."""
    return max((row["epoch"] for row in epoch_history(out)), default=0)


def seconds_per_epoch(out: Path, since: int) -> Optional[float]:
    """The run's median seconds per epoch: of the epochs after ``since`` (those this invocation trained: the
    machine as it is now) once there are 3, else of all its epochs (an earlier session's machine, which may
    have been busier or quieter); None before the run has any."""
    rows = epoch_history(out)
    recent = [row["seconds"] for row in rows if row["epoch"] > since]
    seconds = recent if len(recent) >= 3 else [row["seconds"] for row in rows]
    return statistics.median(seconds) if seconds else None


def curve_point(config, num_samples: int, points: int) -> Dict:
    """Test log p(x) of the run's latest checkpoint on ``points`` strided test points."""
    vae, _ = load_vae(Path(config.out) / CHECKPOINT)
    data = config_dataset(config)
    x = data.test[evaluation_indices(len(data.test), points)]
    torch.manual_seed(config.seed)
    result = evaluate(vae.model, vae.guide, x, num_samples=num_samples)
    return {"log_px": result.mean, "log_px_se": result.stderr, "elbo": result.elbo, "points": len(x)}


def advance(runs, states: Dict, budget: Dict, hours: float, revision: str) -> None:
    """Train every run on, milestone by milestone, while the estimated time fits in ``hours``; a run whose
    next segment does not fit stays where it is for this invocation."""
    deadline, waiting = time.monotonic() + hours * 3600, set()
    start = {config.out: last_epoch(Path(config.out)) for *_, config in runs}   # what earlier invocations trained
    for milestone in milestones(budget["target_epochs"]):
        for binarization, name, seed, config in runs:
            state, out = states[config.out], Path(config.out)
            if state["epochs"] >= milestone or config.out in waiting:
                continue
            per_epoch = seconds_per_epoch(out, start[config.out]) or 0.0
            need = (milestone - state["epochs"]) * per_epoch + CURVE_SECONDS
            if time.monotonic() + need > deadline:
                waiting.add(config.out)
                print(f"{binarization}: {name}: training on to epoch {milestone} would take ~{need / 60:.0f} min, "
                      f"more than --hours leaves; it stays at epoch {state['epochs']} this time", flush=True)
                continue
            print(f"{binarization}: {name}: training epochs {state['epochs'] + 1}..{milestone}", flush=True)
            result = train(dataclasses.replace(config, epochs=milestone), resume=(out / CHECKPOINT).exists(),
                           progress=True, figures=False)
            if result.stop_reason == "interrupted":
                raise KeyboardInterrupt
            point = curve_point(config, budget["num_samples"], budget["curve_points"])
            state["curve"].append({"epoch": milestone, **point})
            state.update(epochs=milestone, revision=revision, machine=machine())
            save(config, state)
            print(f"{binarization}: {name}: epoch {milestone}: log p(x) {point['log_px']:.2f} ± "
                  f"{point['log_px_se']:.2f} on {point['points']} test points", flush=True)


def save(config, state: Dict) -> None:
    (Path(config.out) / "record.json").write_text(json.dumps(state, indent=1) + "\n")


def finish(runs, states: Dict, budget: Dict) -> None:
    """Score every run whose last full evaluation is older than its epoch, on the full test set."""
    for binarization, name, seed, config in runs:
        state = states[config.out]
        if state["epochs"] == 0 or (state["final"] or {}).get("epoch") == state["epochs"]:
            continue
        print(f"{binarization}: {name}: scoring epoch {state['epochs']} on the full test set (S = "
              f"{budget['num_samples']}; ~15 min on 2 CPU cores)", flush=True)
        vae, _ = load_vae(Path(config.out) / CHECKPOINT)
        state["final"] = {"epoch": state["epochs"], **score(vae, config, budget["num_samples"], budget["eval_points"],
                                                            "random", budget["gap_points"])}
        save(config, state)


def run(budget_name: str, budget: Dict, runs, out_dir: Path, command: str, revision: str, hours: Optional[float],
        published: Dict, published_cells, sources: str, rows: Optional[List[str]] = None) -> Dict:
    """Advance the runs for ``hours`` (0: only score and tabulate what is there), score, and write
    ``table.md``, ``metrics.json`` and ``curves.png``.  ``rows``: advance and score only the runs whose folder
    names start with one of these (the table keeps every run's last full evaluation)."""
    states = {}
    for binarization, name, seed, config in runs:
        settings = run_settings(config, budget=budget_name, seed=seed, num_samples=budget["num_samples"],
                                curve_points=budget["curve_points"], eval_points=budget["eval_points"],
                                gap_points=budget["gap_points"])
        del settings["config"]["epochs"]           # grows session by session
        states[config.out] = dict(load_state(config, settings), name=name, group=binarization, seed=seed)
    if hours is None:
        raise StudyError(f"the {budget_name} budget trains in stages across sessions: say how long this session "
                         f"may train with --hours H (0 only scores and tabulates what the runs reached)")
    chosen = [r for r in runs if not rows or any(Path(r[3].out).name.startswith(f"{row}-seed") for row in rows)]
    if rows and not chosen:
        raise StudyError(f"--rows {','.join(rows)} names no run; the runs are "
                         f"{', '.join(Path(c.out).name.rsplit('-seed', 1)[0] for *_, c in runs)}")
    advance(chosen, states, budget, hours, revision)
    finish(chosen, states, budget)
    records = [dict(states[c.out], name=f"{b}: {n}") for b, n, _, c in runs if states[c.out]["final"]]
    rows, table = [], {}
    for record in records:
        final = record["final"]
        binarization, name = record["name"].split(": ", 1)
        value, fraction = published_cells(binarization, name, final["epoch"])
        gap = final["train_log_px"] - final["log_px"]
        table[record["name"]] = {"epochs": final["epoch"], "log_px": [final["log_px"], final["log_px_se"]],
                                 "elbo": final["elbo"], "active_units": final["active_units"], "gap": gap}
        rows.append((binarization, name, final["epoch"], f"{final['log_px']:.2f} ± {final['log_px_se']:.2f}", value,
                     fraction, f"{final['elbo']:.2f}", final["active_units"], f"{gap:.2f}"))
    description = (f"Network 784-200-200-50 tanh, batch 100, Adam lr 1e-3 on the IWAE paper's schedule (3^i epochs "
                   f"at 10^(-i/7)), seed {budget['seeds']}, trained in stages across sessions: the epochs column is "
                   f"what each run has reached so far. Test log p(x): importance sampling, S = {budget['num_samples']}"
                   f", on all 10,000 test points, ± its standard error over points; gap = log p(x) on "
                   f"{budget['gap_points']} random training points minus test. VampPrior: K = "
                   f"{budget['vamp_components']} pseudo-inputs {budget.get('vamp_network', 'on the same network')}. "
                   f"`curves.png`: log p(x) on "
                   f"{budget['curve_points']} strided test points against epochs, published values as lines."
                   f"\n\nSources:\n{sources}")
    write_table(out_dir, f"Binarized MNIST study ({budget_name} budget)", command, description,
                ("binarization", "objective", "epochs reached", "test log p(x) ± SE (points)", "published",
                 "fraction of its epochs", "test ELBO", "active units", "train - test gap"), rows, records)
    write_metrics(out_dir, command, budget_name, budget["seeds"], table, records)
    plot_curves([states[c.out] for *_, c in runs], published, out_dir / "curves.png", budget)
    return table


def plot_curves(states: List[Dict], published: Dict, path: Path, budget: Dict) -> None:
    """Test log p(x) against epochs, one line per run, its published value as a dashed line of its colour."""
    from pyro_vae.plots import new_figure, save_figure
    fig = new_figure((8.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, state in enumerate(s for s in states if s["curve"]):
        colour = f"C{i}"
        label = f"{state['group']}: {state['name']}"
        epochs = [p["epoch"] for p in state["curve"]]
        ax.errorbar(epochs, [p["log_px"] for p in state["curve"]], yerr=[p["log_px_se"] for p in state["curve"]],
                    color=colour, marker="o", ms=3, capsize=2, label=label)
        value = published.get((state["group"], state["name"]), (None,))[0]
        if value is not None:
            ax.axhline(value, color=colour, ls="--", lw=1, label=f"{label}, published")
    ax.set_xscale("log")
    ax.set_xlabel("epochs (log scale)")
    ax.set_ylabel(f"test log p(x), S = {budget['num_samples']}, {budget['curve_points']} strided points (nats)")
    ax.set_title("Binarized MNIST, medium budget: log p(x) against training epochs")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path, tight=True)

