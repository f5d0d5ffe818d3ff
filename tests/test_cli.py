"""Tests of the ``pyro-vae`` command line: an end-to-end tiny run, the sample and reconstruct
commands, --help coverage of every config field, and clear one-line errors (exit 1, no traceback)."""
import argparse
import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.cli import build_parser, config_from_args, main
from pyro_vae.data import load_dataset
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.factory import load_vae
from pyro_vae.training import TrainConfig

TINY = ["--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--no-progress"]
FIGURES = ("curves.png", "reconstructions.png", "samples.png", "latent.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONSOLE_SCRIPT = Path(sys.executable).parent / "pyro-vae"


def train_subparser() -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["train"]


def assert_png(path: Path):
    assert path.is_file(), path
    content = path.read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 1000, path


# -- 1. end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_every_output(trained_run, capsys):
    out = trained_run
    for name in ("checkpoint.pt", "best.pt", "metrics.jsonl", "config.json", "summary.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    config = json.loads((out / "config.json").read_text())
    assert set(config) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert TrainConfig.from_dict(config) == TrainConfig(epochs=2, hidden=(16,), latent_dim=2, out=str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["best_val_bound"]) and summary["best_val_bound"] < 0
    assert math.isfinite(summary["test_elbo"]) and summary["test_elbo"] < 0
    assert summary["bound"] == "ELBO" and summary["test_bound"] == summary["test_elbo"]
    assert summary["best_val_bound"] == max(row["val_bound"] for row in rows)
    assert summary["epochs_run"] == 2 and summary["stop_reason"] == "completed"
    for name in FIGURES:
        assert_png(out / name)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["model_kwargs"]["hidden"] == [16]


def test_sample_command(trained_run, capsys):
    target = trained_run / "s"
    assert main(["sample", str(trained_run), "--num", "16", "--out", str(target)]) == 0
    samples = np.load(trained_run / "s.npy")
    assert samples.shape == (16, 64) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 1
    assert_png(trained_run / "s.png")
    assert "s.npy" in capsys.readouterr().out
    # the same seed gives the same samples; they are the decoded prior draws of best.pt's model
    vae, _ = load_vae(trained_run / "best.pt")
    torch.manual_seed(0)
    assert np.array_equal(samples, vae.sample(16).numpy())


def test_reconstruct_command(trained_run):
    target = trained_run / "r"
    assert main(["reconstruct", str(trained_run / "best.pt"), "--num", "5", "--out", str(target)]) == 0
    pairs = np.load(trained_run / "r.npy")
    assert pairs.shape == (2, 5, 64)
    data = load_dataset("digits", None, "dynamic", None, 0)
    rows = torch.arange(5) * len(data.test) // 5                  # spread over the split, not its first 5 rows
    assert np.array_equal(pairs[0], data.test[rows].numpy())      # the (binarized) test inputs
    vae, _ = load_vae(trained_run / "best.pt")
    assert np.array_equal(pairs[1], vae.reconstruct(data.test[rows]).numpy())
    assert_png(trained_run / "r.png")


def test_sample_and_reconstruct_write_into_the_run_folder_by_default(trained_run, tmp_path, monkeypatch, capsys):
    """Without --out, what a command makes of a run lands in the run folder (not the current folder), whether
    the checkpoint is named by its folder or by its file."""
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(trained_run), "--num", "4", "--device", "cpu"]) == 0
    assert main(["reconstruct", str(trained_run / "best.pt"), "--num", "3", "--device", "cpu"]) == 0
    assert np.load(trained_run / "samples.npy").shape == (4, 64)
    assert np.load(trained_run / "reconstructions.npy").shape == (2, 3, 64)
    assert_png(trained_run / "samples.png") and assert_png(trained_run / "reconstructions.png")
    assert list(tmp_path.iterdir()) == []                          # nothing in the current folder
    printed = capsys.readouterr().out
    assert str(trained_run / "samples.npy") in printed and str(trained_run / "reconstructions.npy") in printed


@pytest.mark.parametrize("command", ["sample", "reconstruct"])
def test_sample_and_reconstruct_take_a_device(trained_run, command, capsys):
    args = build_parser().parse_args([command, str(trained_run), "--device", "auto"])
    assert args.device == "auto"
    if not torch.cuda.is_available():
        assert main([command, str(trained_run), "--device", "cuda", "--out", str(trained_run / "x")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"pyro-vae {command}: error: ") and "CUDA is not available" in err


def test_version_flag_prints_the_one_version(capsys):
    from importlib.metadata import version
    from pyro_vae import __version__
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyro-vae {__version__}"
    assert version("pyro_vae") == __version__          # the installed metadata reads pyro_vae/version.py
    done = subprocess.run([str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"pyro-vae {__version__}"


def test_console_script_help():
    done = subprocess.run([str(CONSOLE_SCRIPT), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--latent-dim" in done.stdout and "--resume" in done.stdout and "usage: pyro-vae train" in done.stdout


# -- 2. --help covers the config -----------------------------------------------------------------------

def test_every_config_field_has_a_documented_flag():
    actions = {opt: a for a in train_subparser()._actions for opt in a.option_strings}
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in actions, f"no {flag} for TrainConfig.{field.name}"
        assert actions[flag].help and actions[flag].help.strip(), flag
        assert actions[flag].dest == field.name
    for flag in ("--resume", "--no-progress", "--no-figures"):
        assert actions[flag].help


def test_flag_defaults_are_the_config_defaults():
    args = build_parser().parse_args(["train"])
    assert config_from_args(args) == TrainConfig()
    args = build_parser().parse_args(["train", "--hidden", "8,4", "--lr-schedule", "cosine", "--clip-norm", "2",
                                      "--warmup-epochs", "1.5", "--valid-size", "100"])
    assert config_from_args(args) == TrainConfig(hidden=(8, 4), lr_schedule="cosine", clip_norm=2.0,
                                                 warmup_epochs=1.5, valid_size=100)


# -- 3. clear errors -----------------------------------------------------------------------------------

def assert_train_error(capsys, argv, *fragments):
    assert main(["train", "--no-progress", "--no-figures", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("pyro-vae train: error: "), captured.err
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    for fragment in fragments:
        assert fragment in captured.err, (fragment, captured.err)
    return captured.err


def test_error_bernoulli_on_grey_levels(tmp_path, capsys):
    assert_train_error(capsys, ["--binarize", "none", "--epochs", "1", "--out", str(tmp_path / "run")],
                       "binary", "--binarize")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_error_existing_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"previous run")
    assert_train_error(capsys, ["--out", str(run)], "already exists", "--resume")
    assert (run / "checkpoint.pt").read_bytes() == b"previous run"


def test_error_resume_without_checkpoint(tmp_path, capsys):
    assert_train_error(capsys, ["--resume", "--out", str(tmp_path / "run")], "--resume", "no checkpoint")


def test_error_missing_mnist(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_train_error(capsys, ["--dataset", "mnist", "--data-dir", str(empty), "--out", str(tmp_path / "run")],
                       "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "--download", str(empty))


def test_error_missing_array_file(tmp_path, capsys):
    missing = tmp_path / "some.npz"
    assert_train_error(capsys, ["--dataset", str(missing), "--out", str(tmp_path / "run")],
                       str(missing), "does not exist")


def test_error_values_outside_unit_interval(tmp_path, capsys):
    path = tmp_path / "big.npy"
    np.save(path, np.random.default_rng(0).uniform(0, 3, size=(50, 64)).astype(np.float32))
    assert_train_error(capsys, ["--dataset", str(path), "--binarize", "none", "--likelihood",
                                "continuous-bernoulli", "--out", str(tmp_path / "run")], "[0, 1]")


def test_scale_uint8_flag_reaches_training_and_the_commands_on_the_run(tmp_path, capsys):
    """uint8 data under a Gaussian likelihood: the default divides by 255 and says so in one line; --scale-uint8
    off keeps 0..255 in training and in the commands that reload the data from the run's config."""
    path = tmp_path / "pixels.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, size=(60, 16), dtype=np.uint8))
    flags = ["train", "--dataset", str(path), "--likelihood", "gaussian", "--sigma", "1", "--hidden", "8",
             "--latent-dim", "2", "--epochs", "1", "--no-progress", "--no-figures"]
    assert main(flags + ["--out", str(tmp_path / "auto")]) == 0
    assert f"{path}: uint8 values 0..255 divided by 255" in capsys.readouterr().err
    assert main(flags + ["--scale-uint8", "off", "--out", str(tmp_path / "off")]) == 0
    assert "divided by 255" not in capsys.readouterr().err
    assert json.loads((tmp_path / "off" / "config.json").read_text())["scale_uint8"] == "off"
    assert main(["reconstruct", str(tmp_path / "off"), "--num", "5"]) == 0
    assert np.load(tmp_path / "off" / "reconstructions.npy")[0].max() > 200          # the inputs kept 0..255
    assert main(["reconstruct", str(tmp_path / "auto"), "--num", "5"]) == 0
    assert np.load(tmp_path / "auto" / "reconstructions.npy")[0].max() <= 1


def test_error_invalid_config_value(tmp_path, capsys):
    assert_train_error(capsys, ["--lr", "-1", "--out", str(tmp_path / "run")], "lr must be a finite number > 0")


@pytest.mark.parametrize("value", ["0", "abc", "16,-2", ""])
def test_error_bad_hidden_is_an_argparse_error(capsys, value):
    with pytest.raises(SystemExit) as info:
        main(["train", "--hidden", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --hidden" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["sample", "reconstruct"])
def test_error_missing_checkpoint(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyro-vae {command}: error: no checkpoint") and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_error_garbage_checkpoint(tmp_path, capsys):
    garbage = tmp_path / "best.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["sample", str(garbage), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae sample: error:") and "not a readable pyro_vae checkpoint" in err


# -- 4. python -m pyro_vae -----------------------------------------------------------------------------

def test_python_dash_m_matches_console_entry_point(tmp_path, capsys):
    args = ["train", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--no-progress", "--no-figures"]
    done = subprocess.run([sys.executable, "-m", "pyro_vae", *args, "--out", str(tmp_path / "m")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "best validation ELBO" in done.stdout and "Traceback" not in done.stderr
    assert not any((tmp_path / "m" / name).exists() for name in FIGURES)
    # cli.main, which the pyro-vae console script calls, gives the very same run
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == done.stdout.splitlines()[0]
    a, b = load_checkpoint(tmp_path / "m" / "checkpoint.pt"), load_checkpoint(tmp_path / "c" / "checkpoint.pt")
    for name, tensor in a["model_state"].items():
        assert torch.equal(tensor, b["model_state"][name]), name
    # errors through python -m: exit status 1 and the one-line message
    bad = subprocess.run([sys.executable, "-m", "pyro_vae", *args, "--out", str(tmp_path / "m")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("pyro-vae train: error:") and "--resume" in bad.stderr


# -- review findings ---------------------------------------------------------------------------------

def test_resume_needs_only_the_flags_that_change(tmp_path, capsys):
    """The README's `pyro-vae train --out DIR --resume --epochs N`: untyped flags come from the saved run."""
    out = tmp_path / "run"
    common = ["--out", str(out), "--no-progress", "--no-figures"]
    assert main(["train", "--epochs", "1", "--hidden", "16", "--latent-dim", "3", "--lr", "0.002"] + common) == 0
    assert main(["train", "--resume", "--epochs", "2"] + common) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden"], config["latent_dim"], config["lr"], config["epochs"]) == ([16], 3, 0.002, 2)
    assert [row["epoch"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    capsys.readouterr()
    # a typed flag that may not change is still refused, naming it
    assert main(["train", "--resume", "--epochs", "3", "--latent-dim", "4"] + common) == 1
    assert "latent_dim: 3 -> 4" in capsys.readouterr().err


def test_figures_that_cannot_be_drawn_do_not_fail_a_finished_run(tmp_path, capsys):
    data = tmp_path / "two_channel.npy"
    np.save(data, np.random.default_rng(0).random((120, 2, 4, 4)).astype(np.float32))
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="figures skipped"):
        code = main(["train", "--dataset", str(data), "--likelihood", "continuous-bernoulli", "--epochs", "1",
                     "--hidden", "8", "--latent-dim", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    assert (out / "summary.json").exists() and (out / "curves.png").exists()
    printed = capsys.readouterr().out
    assert "summary.json" in printed and "samples.png" not in printed   # lists only what was written


@pytest.mark.parametrize("num", ["0", "-1", "x"])
def test_sample_num_must_be_positive(trained_run, num, capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", str(trained_run), "--num", num])
    assert info.value.code == 2 and "positive integer" in capsys.readouterr().err


# -- IWAE training and the evaluate command ---------------------------------------------------------

def test_train_with_iwae_dreg_from_the_cli(tmp_path, capsys):
    out = tmp_path / "iwae"
    assert main(["train", "--loss", "iwae", "--num-particles", "5", "--gradient", "dreg", "--epochs", "2",
                 "--hidden", "32", "--latent-dim", "4", "--out", str(out), "--no-progress", "--no-figures"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["loss"], config["num_particles"], config["gradient"]) == ("iwae", 5, "dreg")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["val_bound"] > rows[0]["val_bound"] > -45      # the IWAE_5 bound improves
    assert all(row["val_bound_name"] == "IWAE_5" and row["val_elbo"] < row["val_bound"] for row in rows)
    capsys.readouterr()
    assert main(["train", "--loss", "elbo", "--gradient", "dreg", "--out", str(tmp_path / "x")]) == 1
    assert "--gradient dreg applies to the iwae and miwae" in capsys.readouterr().err


def test_every_bound_is_printed_and_stored_under_its_own_name(tmp_path, capsys):
    """Review finding 4: `train --loss iwae --num-particles 50` printed the IWAE_50 bound as "test ELBO" (and
    stored it as best_val_elbo / test_elbo / val_elbo).  Now each figure carries its name and `evaluate`
    on the checkpoint confirms both: its IWAE_50 and its ELBO on the same test points, within Monte-Carlo
    error (different draws)."""
    out = tmp_path / "iwae50"
    assert main(["train", *TINY, "--loss", "iwae", "--num-particles", "50", "--no-figures", "--out", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    match = re.fullmatch(r"best validation IWAE_50 bound (-?\d+\.\d+) nats at epoch (\d+) \(early stopping on it; "
                         r"completed\); test IWAE_50 bound (-?\d+\.\d+) nats, test ELBO \(k=1\) (-?\d+\.\d+) nats",
                         line)
    assert match, line
    test_bound, test_elbo = float(match.group(3)), float(match.group(4))
    assert test_elbo < test_bound - 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bound"] == "IWAE_50" and "best_val_elbo" not in summary
    assert (summary["test_bound"], summary["test_elbo"]) == (pytest.approx(test_bound, abs=1e-3),
                                                             pytest.approx(test_elbo, abs=1e-3))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_bound_name"] == "IWAE_50" and r["val_elbo"] < r["val_bound"] for r in rows)
    assert summary["best_val_bound"] == max(r["val_bound"] for r in rows)
    assert main(["evaluate", str(out), "--num-samples", "500", "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    record = json.loads((tmp_path / "eval" / "evaluation_test.json").read_text())
    assert record["iwae_curve"]["50"] == pytest.approx(test_bound, abs=0.3)
    assert record["elbo"] == pytest.approx(test_elbo, abs=0.3)


def test_evaluate_prints_the_headline_and_writes_per_datapoint_json(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_run), "--split", "test", "--num-samples", "200", "--num", "40",
                 "--particle-chunk", "64", "--out", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    mean, se = re.fullmatch(r"log p\(x\) = (-?\d+\.\d\d) ± (\d+\.\d\d) nats", lines[0]).groups()
    record = json.loads((out / "evaluation_test.json").read_text())
    assert record["num_points"] == 40 and record["num_samples"] == 200
    # --num strides over the split (a split sorted by class must not be measured on its first class)
    n_test = len(load_dataset("digits").test)
    assert record["indices"] == [i * n_test // 40 for i in range(40)] and record["indices"][-1] > n_test - n_test // 40 - 1
    per_point = torch.tensor(record["log_likelihood"])
    assert per_point.shape == (40,)
    assert float(mean) == pytest.approx(per_point.mean().item(), abs=0.006)
    assert float(se) == pytest.approx(per_point.std().item() / math.sqrt(40), abs=0.006)
    curve = {int(k): v for k, v in record["iwae_curve"].items()}
    assert list(curve) == [1, 5, 50, 200] and curve[1] <= curve[5] <= curve[50] <= curve[200] + 1e-6
    assert record["elbo"] == curve[1] and record["inference_gap"] >= 0
    # the summary's ELBO agrees with the training run's test ELBO on the same points (within MC error)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert abs(record["elbo"] - summary["test_elbo"]) < 3


def test_evaluate_refuses_the_dynamically_binarized_train_split(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--split", "train", "--num-samples", "2"]) == 1
    assert "dynamic binarization" in capsys.readouterr().err


# -- a run given as a file -----------------------------------------------------------------------------

def test_config_file_in_sections_with_flags_overriding_it(tmp_path):
    (tmp_path / "run.toml").write_text('[data]\ndataset = "digits"\nbinarize = "static"\n'
                                       '[model]\nhidden = [32, 16]\nlatent_dim = 3\nmodel_args = {}\n'
                                       '[objective]\nloss = "iwae"\nnum_particles = 4\n'
                                       '[optim]\nepochs = 7\nlr = 0.002\n[run]\nseed = 5\n')
    argv = ["train", "--config", str(tmp_path / "run.toml"), "--seed", "9", "--out", str(tmp_path / "out")]
    config = config_from_args(build_parser().parse_args(argv), _explicit(argv))
    assert (config.binarize, config.hidden, config.latent_dim, config.loss, config.num_particles) == \
        ("static", (32, 16), 3, "iwae", 4)
    assert (config.epochs, config.lr, config.seed, config.batch_size) == (7, 0.002, 9, TrainConfig().batch_size)


def test_a_runs_config_json_is_a_valid_config_file(trained_run, tmp_path):
    saved = json.loads((trained_run / "config.json").read_text())
    argv = ["train", "--config", str(trained_run / "config.json")]
    config = config_from_args(build_parser().parse_args(argv), _explicit(argv))
    assert config.to_dict() == saved


@pytest.mark.parametrize("text, message", [
    ("[optim]\nepoch = 3\n", r"unknown key 'epoch' in \[optim\]"),
    ("[model]\nlr = 0.1\n", r"unknown key 'lr' in \[model\] \(it belongs in \[optim\]\)"),
    ("[training]\nepochs = 3\n", "unknown key 'training'"),
    ("epochs = [\n", "not a readable config file"),
])
def test_bad_config_files_are_named(tmp_path, capsys, text, message):
    (tmp_path / "bad.toml").write_text(text)
    assert main(["train", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "out")]) == 1
    assert re.search(message, capsys.readouterr().err)


def _explicit(argv):
    from pyro_vae.cli_train import _explicit_train_flags
    return _explicit_train_flags(argv)
