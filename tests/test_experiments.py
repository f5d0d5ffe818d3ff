"""The experiment runner end to end on the smoke budget (what CI can afford), and its resumability."""
import json

import pytest

from experiments.__main__ import main
from pyro_vae.config import TrainConfig


def test_prior_study_smoke_writes_table_metrics_and_plot_and_resumes(tmp_path, capsys):
    out = tmp_path / "priors"
    assert main(["run", "priors", "--budget", "smoke", "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert table.splitlines()[4].startswith("Machine(s): ") and "cores, torch" in table.splitlines()[4]
    for prior in ("standard", "mog", "vamp"):
        assert f"| {prior} |" in table
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["command"].startswith("python -m experiments run priors --budget smoke")
    assert metrics["seeds"] == [0] and len(metrics["revisions"]) == 1 and metrics["machines"][0].count("cores")
    assert {r["name"] for r in metrics["runs"]} == {"standard", "mog", "vamp"}
    assert all(r["revision"] == metrics["revisions"][0] for r in metrics["runs"])   # which code made each run
    assert all(-70 < r["log_px"] < -20 and r["elbo"] <= r["log_px"] + 0.5 for r in metrics["runs"])
    assert (out / "priors.png").stat().st_size > 1000
    # a second run reuses every finished run instead of training again
    records = sorted(out.glob("runs/*/record.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    files = {name: (out / name).read_bytes() for name in ("table.md", "metrics.json")}
    capsys.readouterr()
    assert main(["run", "priors", "--budget", "smoke", "--out", str(out)]) == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps
    # ... says so, and writes the same table (its revision line names the runs' revisions, not today's)
    assert capsys.readouterr().out.count("served from records") == 3
    assert {name: (out / name).read_bytes() for name in files} == files


def test_each_budget_writes_its_own_folder(tmp_path, monkeypatch):
    """A smoke run must never rewrite another budget's committed table (it once served small's records
    under a smoke header)."""
    import experiments.__main__ as runner
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    assert main(["run", "priors", "--budget", "smoke"]) == 0
    assert (tmp_path / "priors" / "smoke" / "table.md").exists()
    assert not (tmp_path / "priors" / "table.md").exists() and not (tmp_path / "priors" / "small").exists()


def test_a_record_made_with_other_settings_is_refused(tmp_path, monkeypatch, capsys):
    import experiments.priors as priors
    out = tmp_path / "priors"
    assert main(["run", "priors", "--budget", "smoke", "--out", str(out)]) == 0
    smoke = priors.BUDGETS["smoke"]
    monkeypatch.setitem(priors.BUDGETS, "smoke", dict(smoke, num_samples=30, train=dict(smoke["train"], epochs=2)))
    capsys.readouterr()
    assert main(["run", "priors", "--budget", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "num_samples: 20 -> 30" in err and "epochs: 1 -> 2" in err and "Delete its folder" in err
    # a record from before records carried settings is compared on what it holds: its config
    record_path = next(out.glob("runs/*/record.json"))
    record = json.loads(record_path.read_text())
    del record["settings"]
    record_path.write_text(json.dumps(record))
    assert main(["run", "priors", "--budget", "smoke", "--out", str(out)]) == 2
    assert "epochs: 1 -> 2" in capsys.readouterr().err


def test_estimator_study_smoke_reports_gap_and_active_units(tmp_path):
    out = tmp_path / "estimators"
    assert main(["run", "estimators", "--budget", "smoke", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    names = {r["name"] for r in metrics["runs"]}
    assert names == {"VAE k=1", "VAE k=2", "IWAE k=2", "IWAE-DReG k=2", "2-layer IWAE k=2", "2-layer IWAE-DReG k=2"}
    for run in metrics["runs"]:
        assert run["gap"] == run["train_log_px"] - run["log_px"]
        assert run["config"]["loss"] == ("elbo" if run["name"].startswith("VAE") else "iwae")
        assert (run["config"]["model"] is not None) == run["name"].startswith("2-layer")
        assert run["config"]["gradient"] == ("dreg" if "DReG" in run["name"] else "standard")
    assert "| IWAE-DReG k=2 |" in (out / "table.md").read_text()
    assert (out / "estimators.png").stat().st_size > 1000


def test_a_budgets_evaluation_chunking_is_used_and_keys_its_records(tmp_path, monkeypatch, capsys):
    """Another chunking draws other samples: a budget's ``eval_batch_size`` reaches the evaluator, is stored in
    each record and keys it, so records made with the default chunking are refused, not served."""
    import experiments.common as common
    import experiments.estimators as estimators
    out = tmp_path / "estimators"
    smoke = estimators.BUDGETS["smoke"]
    tiny = dict(smoke, ks=[1], two_layer_args=None)
    monkeypatch.setitem(estimators.BUDGETS, "smoke", tiny)
    assert main(["run", "estimators", "--budget", "smoke", "--out", str(out)]) == 0
    record = json.loads(next(out.glob("runs/*/record.json")).read_text())
    assert record["eval_batch_size"] == common.EVAL_BATCH_SIZE and "eval_batch_size" not in record["settings"]
    seen = []
    evaluate = common.evaluate
    monkeypatch.setattr(common, "evaluate", lambda *a, **k: seen.append(k["batch_size"]) or evaluate(*a, **k))
    monkeypatch.setitem(estimators.BUDGETS, "smoke", dict(tiny, eval_batch_size=7))
    capsys.readouterr()
    assert main(["run", "estimators", "--budget", "smoke", "--out", str(out)]) == 2
    assert "eval_batch_size" in capsys.readouterr().err and seen == []
    assert main(["run", "estimators", "--budget", "smoke", "--out", str(out / "chunked")]) == 0
    record = json.loads(next((out / "chunked").glob("runs/*/record.json")).read_text())
    assert record["eval_batch_size"] == record["settings"]["eval_batch_size"] == 7 and seen == [7, 7]


def test_the_binarized_mnist_budgets_chunking_reaches_each_run(tmp_path, monkeypatch):
    """The binarized-MNIST ``small`` budget scores in chunks of 20 points, as the estimator study does: a budget's
    ``eval_batch_size`` is handed to every run (which stores it and keys the record by it), and a budget
    without one hands ``None``, the evaluator's default."""
    from experiments import binarized_mnist
    seen = []

    def capture(name, seed, config, *args, **kwargs):
        seen.append(kwargs["eval_batch_size"])
        raise _Stop

    monkeypatch.setattr(binarized_mnist, "run_one", capture)
    for chunk in (None, 7):
        budget = dict(binarized_mnist.BUDGETS["smoke"])
        if chunk is not None:
            budget["eval_batch_size"] = chunk
        monkeypatch.setitem(binarized_mnist.BUDGETS, "smoke", budget)
        with pytest.raises(_Stop):
            main(["run", "binarized-mnist", "--budget", "smoke", "--data-dir", str(tmp_path), "--out",
                  str(tmp_path / "out")])
    assert seen == [None, 7] and binarized_mnist.BUDGETS["small"]["eval_batch_size"] == 20


def test_binarized_mnist_study_smoke_on_generated_files(tmp_path):
    """Both binarizations end to end on small files in the real formats (.amat and MNIST's IDX), with the
    published numbers beside ours; a missing data folder is a clear error naming the files."""
    from test_data import AMAT_ROWS, N_TEST, write_amat_dataset, write_idx_dataset
    data_dir = tmp_path / "data"
    write_amat_dataset(data_dir / "binarized_mnist")
    write_idx_dataset(data_dir / "MNIST" / "raw", gz=True)
    out = tmp_path / "binarized"
    assert main(["run", "binarized-mnist", "--budget", "smoke", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["group"] for r in metrics["runs"]} == {"static", "dynamic"}
    assert {r["config"]["dataset"] for r in metrics["runs"]} == {"binarized-mnist", "mnist"}
    assert {r["config"]["binarize"] for r in metrics["runs"] if r["group"] == "dynamic"} == {"dynamic"}
    assert len(metrics["runs"]) == 3 + 2           # the VampPrior row is static only
    vamp = [r for r in metrics["runs"] if "Vamp" in r["name"]]
    assert [(r["group"], r["config"]["prior"], r["config"]["prior_components"]) for r in vamp] == [("static", "vamp", 5)]
    # every test point of the small generated files (the budget asks for 20), the gap on 20 training points
    assert all(r["eval_points"] == min(20, {"static": AMAT_ROWS["test"], "dynamic": N_TEST}[r["group"]])
               and r["settings"]["gap_points"] == 20 for r in metrics["runs"])
    table = (out / "table.md").read_text()
    assert "| static | IWAE k=5 | 1 |" in table and "| dynamic | VAE k=1 | 1 |" in table
    assert "published" in table and "3280 epochs" in table
    # Burda et al. Table 1 beside ours, with the fraction of its 3280 epochs
    assert "| -86.76 | 0.0003 (1/3280) |" in table and "| -85.57 | 0.0005 (1/2000) |" in table
    assert (out / "binarized_mnist.png").stat().st_size > 1000


def test_prior_study_on_static_binarized_mnist_smoke_on_generated_files(tmp_path):
    """The three priors on Larochelle's static binarization (files in the real .amat format), each run's data,
    prior and components in its record, the table saying the data and how many test points were scored."""
    from test_data import write_amat_dataset
    write_amat_dataset(tmp_path / "data" / "binarized_mnist")
    out = tmp_path / "priors-mnist"
    assert main(["run", "priors-mnist", "--budget", "smoke", "--data-dir", str(tmp_path / "data"), "--out",
                 str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [(r["config"]["dataset"], r["config"]["binarize"], r["config"]["prior"], r["config"]["prior_components"])
            for r in metrics["runs"]] == [("binarized-mnist", "none", "standard", 10),
                                          ("binarized-mnist", "none", "mog", 3), ("binarized-mnist", "none", "vamp", 5)]
    table = (out / "table.md").read_text()
    assert "Prior study on static binarized MNIST (smoke budget)" in table and "S = 20 on 20 strided test points" in table
    assert "| vamp | 5 |" in table and (out / "priors.png").stat().st_size > 1000


def test_binarized_mnist_study_without_files_says_which(tmp_path, capsys):
    code = main(["run", "binarized-mnist", "--budget", "smoke", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "out")])
    assert code == 2
    assert "binarized_mnist_train.amat" in capsys.readouterr().err


class _Stop(Exception):
    """Raised by a stand-in to end a study once it has shown what it would train."""


@pytest.mark.parametrize("study", ["binarized-mnist", "estimators", "priors", "priors-mnist"])
@pytest.mark.parametrize("flags", [[], ["--download"]], ids=["no-download", "download"])
def test_data_dir_and_download_flags_reach_the_run_configs(tmp_path, monkeypatch, study, flags):
    """``python -m experiments run ... --download`` fetches missing files as ``pyro-vae train --download``
    does: the flag (like --data-dir) lands in every run's config; without it the configs do not mention it."""
    from experiments import binarized_mnist, estimators, priors
    seen = []

    def capture_extra(budget, out_dir, names, revision, extra=None, group=None, budget_name=None):
        seen.append(TrainConfig(**{**budget["train"], **(extra or {})}))
        raise _Stop

    def capture_config(name, seed, config, *args, **kwargs):
        seen.append(config)
        raise _Stop

    monkeypatch.setattr(binarized_mnist, "run_one", capture_config)
    monkeypatch.setattr(estimators, "train_and_evaluate", capture_extra)
    monkeypatch.setattr(priors, "run_one", capture_config)
    with pytest.raises(_Stop):
        main(["run", study, "--budget", "smoke", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")] + flags)
    assert seen[0].data_dir == str(tmp_path) and seen[0].download == bool(flags)


def test_binarized_mnist_medium_trains_in_stages_across_sessions(tmp_path, monkeypatch, capsys):
    """The medium budget: each invocation trains on for --hours, milestone by milestone (the IWAE paper's stage
    ends), with a curve point at each, scores the epoch reached on the full test set, and the next invocation
    resumes the same runs; without --hours it says how to call it."""
    import experiments.binarized_mnist as study
    from test_data import AMAT_ROWS, write_amat_dataset
    data_dir = tmp_path / "data"
    write_amat_dataset(data_dir / "binarized_mnist")
    tiny = dict(study.BUDGETS["medium"], num_samples=10, curve_points=10, gap_points=10, target_epochs=5,
                train=dict(study.BUDGETS["smoke"]["train"], lr_schedule="iwae"), rows=("VAE k=1", "IWAE k=5"))
    monkeypatch.setitem(study.BUDGETS, "medium", tiny)
    monkeypatch.setattr(study, "BINARIZATIONS", {"static": study.BINARIZATIONS["static"]})
    out = tmp_path / "medium"
    argv = ["run", "binarized-mnist", "--budget", "medium", "--data-dir", str(data_dir), "--out", str(out)]
    assert main(argv) == 2 and "--hours" in capsys.readouterr().err
    assert main(argv + ["--hours", "1"]) == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/record.json")}
    assert set(records) == {"static-VAE_k1-seed0", "static-IWAE_k5-seed0"}
    for record in records.values():
        assert [p["epoch"] for p in record["curve"]] == [1, 4] and record["epochs"] == 4
        assert record["final"]["epoch"] == 4 and record["final"]["eval_points"] == AMAT_ROWS["test"]
    table = (out / "table.md").read_text()
    assert "| static | VAE k=1 | 4 |" in table and "0.0012 (4/3280)" in table
    assert (out / "curves.png").stat().st_size > 1000
    # the next session: a longer target resumes the same runs from epoch 4, with no epoch trained twice
    monkeypatch.setitem(study.BUDGETS, "medium", dict(tiny, target_epochs=13))
    assert main(argv + ["--hours", "1"]) == 0
    run = out / "runs" / "static-VAE_k1-seed0"
    record = json.loads((run / "record.json").read_text())
    assert [p["epoch"] for p in record["curve"]] == [1, 4, 13] and record["final"]["epoch"] == 13
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 14))
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(1e-3) and lrs[4] == pytest.approx(1e-3 * 10 ** (-2 / 7))
    # --rows advances only the runs it names; a name that matches none is refused, naming the runs
    monkeypatch.setitem(study.BUDGETS, "medium", dict(tiny, target_epochs=40))
    assert main(argv + ["--hours", "0", "--rows", "static-VAE"]) == 2
    assert "static-VAE_k1, static-IWAE_k5" in capsys.readouterr().err
    assert main(argv + ["--hours", "1", "--rows", "static-IWAE_k5"]) == 0
    assert json.loads((run / "record.json").read_text())["epochs"] == 13
    assert json.loads((out / "runs" / "static-IWAE_k5-seed0" / "record.json").read_text())["epochs"] == 40
    # --hours 0 trains nothing and writes the same table (but for the command line that wrote it)
    before = (out / "table.md").read_text().splitlines()
    assert main(argv + ["--hours", "0"]) == 0
    after = (out / "table.md").read_text().splitlines()
    assert after[2].endswith("--hours 0`  ") and after[3:] == before[3:]
    with pytest.raises(SystemExit):                          # --hours means nothing to a study run in one go
        main(["run", "priors", "--budget", "smoke", "--hours", "1"])


def test_an_interrupted_study_scores_nothing_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C stops training after a checkpoint (the run returns "interrupted"): the study must stop there,
    not score the half-trained model and record it as finished."""
    from types import SimpleNamespace

    import experiments.common as common
    import experiments.staged as staged
    interrupted = lambda config, **kwargs: SimpleNamespace(stop_reason="interrupted")   # noqa: E731
    monkeypatch.setattr(common, "train", interrupted)
    out = tmp_path / "priors"
    assert main(["run", "priors", "--budget", "smoke", "--out", str(out)]) == 130
    assert "run the same command to resume" in capsys.readouterr().err
    assert not list(out.glob("runs/*/record.json"))
    monkeypatch.setattr(staged, "train", interrupted)
    monkeypatch.setattr(staged, "curve_point", lambda *a: pytest.fail("scored an interrupted run"))
    from test_data import write_amat_dataset
    write_amat_dataset(tmp_path / "data" / "binarized_mnist")
    assert main(["run", "binarized-mnist", "--budget", "medium", "--data-dir", str(tmp_path / "data"), "--out",
                 str(tmp_path / "medium"), "--hours", "1", "--rows", "static-VAE_k1"]) == 130
    assert not list((tmp_path / "medium").glob("runs/*/record.json"))


def test_a_staged_run_times_its_next_segment_on_the_machine_as_it_is_now(tmp_path):
    """An earlier session's epochs (here 100 s, a busy machine) time a segment until this invocation has
    trained 3 epochs of its own (8 s); before any epoch there is no estimate."""
    import json

    from experiments.staged import seconds_per_epoch
    assert seconds_per_epoch(tmp_path, since=0) is None
    rows = [{"epoch": e, "seconds": 100.0} for e in range(1, 6)]
    log = tmp_path / "metrics.jsonl"
    rows += [{"epoch": 6, "seconds": 8.0}, {"epoch": 7, "seconds": 8.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert seconds_per_epoch(tmp_path, since=5) == 100.0            # 2 epochs of this invocation: too few
    log.write_text(log.read_text() + json.dumps({"epoch": 8, "seconds": 9.0}) + "\n")
    assert seconds_per_epoch(tmp_path, since=5) == 8.0


def test_a_staged_run_reads_its_epochs_from_the_checkpoint_where_the_log_is_missing(tmp_path):
    """A checkout whose run folder has a checkpoint but no metrics.jsonl times its segments on the checkpoint's
    history, and an interrupted segment's epochs (past the record's milestone) count as an earlier invocation's."""
    import torch

    from experiments.staged import last_epoch, seconds_per_epoch
    assert last_epoch(tmp_path) == 0
    history = [{"epoch": e, "seconds": 50.0 if e <= 13 else 4.0} for e in range(1, 18)]   # stopped at 17 of 40
    torch.save({"format": "pyro_vae.checkpoint.v1", "model_state": {}, "history": history}, tmp_path / "checkpoint.pt")
    assert last_epoch(tmp_path) == 17
    assert seconds_per_epoch(tmp_path, since=last_epoch(tmp_path)) == 50.0     # none of this invocation's yet
    assert seconds_per_epoch(tmp_path, since=13) == 4.0
