"""A run stops cleanly on a scheduler's SIGTERM and on Ctrl-C through a pipe, and one folder has one writer
(issue 11).  These start real `pyro-vae train` processes and signal them."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

CONSOLE_SCRIPT = Path(sys.executable).parent / "pyro-vae"
# ~126 steps per epoch on the digits: an epoch ends, then the signal lands mid-epoch
SLOW = ["--epochs", "200", "--patience", "0", "--batch-size", "10", "--hidden", "64", "--latent-dim", "4",
        "--no-figures"]


def _wait_for(path: Path, process, timeout=60.0):
    deadline = time.time() + timeout
    while not path.exists():
        if process.poll() is not None or time.time() > deadline:
            raise AssertionError(f"{path} never appeared (exit code {process.poll()})")
        time.sleep(0.05)
    time.sleep(0.3)                                     # now mid-way through a later epoch


def _checkpoint_position(out: Path):
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    return ckpt["epoch"], ckpt["step"]


def test_sigterm_saves_mid_epoch_exits_nonzero_and_resumes(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([str(CONSOLE_SCRIPT), "train", *SLOW, "--no-progress", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint.pt", process)
    signalled = time.time_ns()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "--resume" in stdout
    epoch, step = _checkpoint_position(out)
    # the save happened at the stop (mid-epoch, unless the signal came during an epoch's validation)
    assert (out / "checkpoint.pt").stat().st_mtime_ns > signalled - 10 ** 8, (epoch, step)
    resumed = subprocess.run([str(CONSOLE_SCRIPT), "train", "--out", str(out), "--resume", "--epochs",
                              str(epoch + 1), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert _checkpoint_position(out) == (epoch + 1, 0)


def test_ctrl_c_through_tee_still_saves(tmp_path):
    """Ctrl-C in a terminal signals the whole pipeline: tee dies first, and the run's next write to the pipe
    (the 'saving' message, the progress bar) must not kill it before it saves."""
    out = tmp_path / "run"
    command = f"{CONSOLE_SCRIPT} train {' '.join(SLOW)} --out {out} 2>&1 | tee {tmp_path / 'log.txt'}"
    process = subprocess.Popen(command, shell=True, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _wait_for(out / "checkpoint.pt", process)
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    signalled = time.time_ns()
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    time.sleep(0.5)
    epoch, step = _checkpoint_position(out)
    assert (out / "checkpoint.pt").stat().st_mtime_ns > max(before, signalled - 10 ** 8), (epoch, step)


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([str(CONSOLE_SCRIPT), "train", *SLOW, "--no-progress", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "checkpoint.pt", first)
        for extra in (["--resume"], []):
            second = subprocess.run([str(CONSOLE_SCRIPT), "train", "--out", str(out), "--no-progress", *extra],
                                    capture_output=True, text=True, timeout=60)
            assert second.returncode == 1
            if extra:
                assert f"being written by another pyro-vae process (PID {first.pid}" in second.stderr, second.stderr
            else:   # a fresh run into a folder with a checkpoint was refused before the lock mattered
                assert "already exists" in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert not (out / ".lock").exists()                 # released when the first run stopped


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    from pyro_vae.checkpoint import run_lock
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text('{"pid": %d, "host": "%s", "started": "earlier"}' % (gone.pid, os.uname().nodename))
    with pytest.warns(UserWarning, match=f"taking over the lock .*PID {gone.pid}"):
        with run_lock(out):
            assert f'"pid": {os.getpid()}' in (out / ".lock").read_text()
    assert not (out / ".lock").exists()


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "run"
    base = [str(CONSOLE_SCRIPT), "train", "--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--no-progress",
            "--out", str(out)]
    assert subprocess.run(base, capture_output=True, timeout=120).returncode == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    again = subprocess.run(base + ["--resume"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already finished (completed after epoch 2)" in again.stdout, again.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files     # not even summary.json rewritten
