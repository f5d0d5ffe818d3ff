"""What a run prints per epoch (pyro_vae.hooks.Progress): a bar on a terminal; one plain line per epoch in a log
(stderr not a terminal) and with ``--no-progress``, never carriage-return spam and never silence; nothing per epoch
only where Python asks for ``progress=False``.  And the evaluators' bars refresh rarely in a log."""
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tqdm import tqdm

from pyro_vae.cli import main
from pyro_vae.data import load_dataset
from pyro_vae.hooks import Progress, epoch_line, progress_mode
from pyro_vae.signals import LOG_REFRESH_SECONDS, bar_settings
from pyro_vae.training import TrainConfig, Trainer
from pyro_vae.vae import build_vae

CONSOLE_SCRIPT = Path(sys.executable).parent / "pyro-vae"
# eager steps: recording a step costs more than these tiny runs train
TINY = ["--hidden", "16", "--latent-dim", "2", "--no-figures", "--patience", "0", "--compile", "off"]
LINE = re.compile(r"^epoch (\d+)/(\d+)  train loss \d+\.\d{3}  validation (ELBO|IWAE_\d+ bound) -\d+\.\d{3} "
                  r"\(best -\d+\.\d{3} at epoch \d+\)  \d+\.\d s$")


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self):
        return True


def epoch_lines(text):
    return [line for line in text.splitlines() if line.startswith("epoch ")]


def test_without_a_terminal_a_run_prints_one_plain_line_per_epoch(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([str(CONSOLE_SCRIPT), "train", *TINY, "--epochs", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr + done.stdout                       # no bar redrawn into the log
    lines = epoch_lines(done.stderr)
    assert [LINE.match(line).group(1, 2) for line in lines] == [("1", "3"), ("2", "3"), ("3", "3")], done.stderr
    assert len(done.stderr) < 2000, done.stderr


def test_no_progress_prints_the_lines_even_on_a_terminal_and_the_bar_is_for_terminals(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["train", *TINY, "--epochs", "2", "--no-progress", "--loss", "iwae", "--num-particles", "2",
                 "--out", str(tmp_path / "lines")]) == 0
    text = terminal.getvalue()
    assert "\r" not in text and [LINE.match(line).group(3) for line in epoch_lines(text)] == ["IWAE_2 bound"] * 2
    terminal.seek(0), terminal.truncate()
    assert main(["train", *TINY, "--epochs", "2", "--out", str(tmp_path / "bar")]) == 0
    text = terminal.getvalue()
    assert "\r" in text and "train: 100%" in text and not epoch_lines(text)   # tqdm's bar, with its remaining time
    assert re.search(r"<\d\d:\d\d", text)


def test_progress_false_from_python_stays_quiet(tmp_path, capsys):
    digits = load_dataset("digits", None, "dynamic", None, 0)
    config = TrainConfig(hidden=(16,), latent_dim=2, epochs=2, patience=0, compile="off", out=str(tmp_path / "run"))
    Trainer(build_vae(digits.data_dim, latent_dim=2, hidden=(16,)), digits, config, progress=False).fit()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_modes_and_the_line():
    assert [progress_mode(p) for p in (True, False, None, "lines", "bar")] == ["auto", "off", "off", "lines", "bar"]
    with pytest.raises(ValueError, match="progress must be True, False or one of auto, bar, lines, off"):
        Progress("loud")
    row = {"epoch": 3, "train_loss": 40.1234, "val_bound": -39.5, "val_bound_name": "IWAE_5", "seconds": 0.84}
    assert epoch_line(row, 300, 2, -39.25) == ("epoch 3/300  train loss 40.123  validation IWAE_5 bound -39.500 "
                                               "(best -39.250 at epoch 2)  0.8 s")


def test_evaluator_bars_refresh_rarely_in_a_log():
    assert bar_settings(Terminal()) == {}
    assert bar_settings(io.StringIO()) == {"mininterval": LOG_REFRESH_SECONDS}
    log = io.StringIO()
    for _ in tqdm(range(50), file=log, **bar_settings(log)):   # 0.5 s: tqdm's own 0.1 s refresh writes 7 states
        time.sleep(0.01)
    assert log.getvalue().count("\r") == 2                   # the first and the last state
    assert "50/50" in log.getvalue()
