"""Tests of data-parallel training (pyro_vae.parallel and pyro_vae.launch, ``train --devices N``): 2 CPU processes over gloo.

Starting the processes costs several seconds each time (every process imports torch and Pyro), so the file
starts them three times: a 2-process run of a deterministic model compared with one process (parity, metrics,
then resumed on 1 process), a stochastic VAE resumed from 1 onto 2 processes and stopped there, and a model
that cannot be trained on several processes (the worker's error reaches the caller).

Parity needs a gradient without Monte-Carlo noise (each rank draws its own): the model below is an
autoencoder with a point-mass guide, z = f(x) exactly, under a Gaussian prior, so every loss and gradient
is a deterministic function of the parameters and a 2-process step must equal the 1-process step up to
float32 summation order.  Its training set (46 points, batch 9) makes every batch split unevenly (5/4) and
the last batch a single point (1/0: rank 1's share is empty), which the b_r * world / B weighting must get
right.
"""
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import pyro
import pyro.distributions as dist
from torch import nn

from pyro_vae import launch, parallel
from pyro_vae.cli import main
from pyro_vae.data import load_dataset
from pyro_vae.checkpoint import BEST, CHECKPOINT, METRICS, load_checkpoint
from pyro_vae.launch import train
from pyro_vae.training import TrainConfig, Trainer

N_TRAIN, BATCH = 46, 9                  # batches 9 x 5 (shares 5/4), then 1 (shares 1/0)
STEPS = math.ceil(N_TRAIN / BATCH)      # 6 steps per epoch
ATOL = 1e-5                             # float32 parameters after 6 to 12 Adam steps with lr 1e-2


# -- models declared on the library's contract (pyro_vae.contract), imported by the processes by name ---

class PointMassAutoencoder(nn.Module):
    """z = encoder(x) exactly (a Delta guide) under a N(0, I) prior, Bernoulli likelihood: no sampling noise."""

    def __init__(self, data_dim, latent_dim=2, hidden=(16,)):
        super().__init__()
        h = hidden[0]
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(data_dim, h), nn.Tanh(), nn.Linear(h, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, h), nn.Tanh(), nn.Linear(h, data_dim))

    def model(self, x, num_data=None):
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Delta(self.encoder(x)).to_event(1))


class ParamStoreAutoencoder(PointMassAutoencoder):
    """The same, with a decoder bias held in Pyro's param store instead of the module."""

    def model(self, x, num_data=None):
        bias = pyro.param("decoder_bias", torch.zeros(x.shape[-1]))
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) + bias).to_event(1), obs=x)


class StopAt:
    """``on_step`` that asks for a stop after step ``at`` = (epoch, step) and records the steps it saw
    (it runs in rank 0's process: picklable because the class is importable by module name)."""

    def __init__(self, at):
        self.at = at

    def __call__(self, trainer, epoch, step, loss):
        if (epoch, step) == self.at:
            trainer.request_stop()


def spec(name: str) -> str:
    return f"{__name__}:{name}"     # "test_distributed:..." under pytest's default import mode


# -- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_digits():
    """Digits (dynamically binarized, seed 0) cut to 46 training, 21 validation and 21 test points."""
    data = load_dataset("digits", None, "dynamic", None, 0)
    return dataclasses.replace(data, train=data.train[:N_TRAIN], train_labels=data.train_labels[:N_TRAIN],
                               valid=data.valid[:21], valid_labels=data.valid_labels[:21],
                               test=data.test[:21], test_labels=data.test_labels[:21])


def config(out, **overrides) -> TrainConfig:
    values = dict(model=spec("PointMassAutoencoder"), hidden=(16,), latent_dim=2, batch_size=BATCH, lr=1e-2,
                  epochs=1, patience=0, out=str(out))
    values.update(overrides)
    return TrainConfig(**values)


def run(cfg, data, resume=False, on_step=None):
    return train(cfg, resume=resume, progress=False, data=data, on_step=on_step, figures=False)


def max_diff(a, b):
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


class Snapshot:
    """on_step (in process) keeping the model's state after the given (epoch, step)s."""

    def __init__(self, *at):
        self.at, self.states = set(at), {}

    def __call__(self, trainer, epoch, step, loss):
        if (epoch, step) in self.at:
            self.states[(epoch, step)] = {k: v.clone() for k, v in trainer.module.state_dict().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_digits):
    """One process, 2 epochs: the states after epochs 1 and 2, and the run folder."""
    out = tmp_path_factory.mktemp("one") / "run"
    snap = Snapshot((0, STEPS))
    result = run(config(out, epochs=2), small_digits, on_step=snap)
    return snap.states[(0, STEPS)], load_checkpoint(out / CHECKPOINT), result


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, small_digits):
    """Two processes, 1 epoch, same config and seed as the reference."""
    out = tmp_path_factory.mktemp("two") / "run"
    result = run(config(out, devices=2), small_digits)
    return out, result


# -- 1. parity with one process ------------------------------------------------------------------------

def test_two_processes_take_the_one_process_steps(reference, two_processes):
    after_epoch_1, _, ref_result = reference
    out, result = two_processes
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 0) and ckpt["config"]["devices"] == 2
    diff = max_diff(ckpt["model_state"], after_epoch_1)
    print(f"max |2-process - 1-process| parameter difference after {STEPS} steps: {diff:.2e}")
    assert diff < ATOL
    # the reduced metrics are the one-process metrics (deterministic model: no sampling noise either way)
    ref_row, row = ref_result.history[0], result.history[0]
    assert row["train_loss"] == pytest.approx(ref_row["train_loss"], rel=1e-5)
    assert row["val_bound"] == pytest.approx(ref_row["val_bound"], rel=1e-5)
    assert row["val_elbo"] == pytest.approx(ref_row["val_elbo"], rel=1e-5)


def test_two_process_run_writes_one_set_of_outputs(two_processes):
    out, result = two_processes
    assert result.stop_reason == "completed" and result.out_dir == out
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt", "config.json", "metrics.jsonl",
                                                     "summary.json"]
    rows = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and rows == result.history
    assert math.isfinite(rows[0]["train_loss"]) and rows[0]["train_loss"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_epoch"] == 1 and math.isfinite(summary["test_elbo"])
    assert isinstance(result.model, PointMassAutoencoder)   # best.pt, rebuilt from its factory
    assert max_diff(result.model.state_dict(), load_checkpoint(out / BEST)["model_state"]) == 0


# -- 2. a 2-process checkpoint resumes on 1 process ---------------------------------------------------

def test_resume_two_processes_on_one(tmp_path, reference, two_processes, small_digits, monkeypatch):
    _, ref_ckpt, ref_result = reference
    out = tmp_path / "run"
    shutil.copytree(two_processes[0], out)
    saved = load_checkpoint(out / CHECKPOINT)
    loaded = {}
    original = Trainer.load_state_dict

    def spy(self, ckpt):
        original(self, ckpt)
        loaded.update({k: v.clone() for k, v in self.module.state_dict().items()})

    monkeypatch.setattr(Trainer, "load_state_dict", spy)
    result = run(config(out, epochs=2, devices=1), small_digits, resume=True)
    assert max_diff(loaded, saved["model_state"]) == 0           # exactly the 2-process parameters
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert (ckpt["epoch"], ckpt["step"]) == (2, 0) and len(result.history) == 2
    assert [r["epoch"] for r in result.history] == [1, 2]
    # and epoch 2 continued the same optimisation (Adam state included) as the 1-process run
    assert max_diff(ckpt["model_state"], ref_ckpt["model_state"]) < ATOL
    assert result.history[1]["train_loss"] == pytest.approx(ref_result.history[1]["train_loss"], rel=1e-5)


# -- 3. a stochastic VAE: resume 1 -> 2 mid-epoch, a stop request on rank 0 stops every rank ---------------

def test_vae_resumes_from_one_process_on_two_and_stops_together(tmp_path, small_digits):
    out = tmp_path / "vae"
    vae_config = dict(model=None, hidden=(16,), latent_dim=2, batch_size=BATCH, epochs=2, patience=0, out=str(out))
    first = run(TrainConfig(**vae_config), small_digits, on_step=StopAt((0, 2)))
    assert first.stop_reason == "interrupted"
    assert (load_checkpoint(out / CHECKPOINT)["epoch"], load_checkpoint(out / CHECKPOINT)["step"]) == (0, 2)

    # rank 0 asks to stop after epoch 2's second step; the request reaches rank 1 with the next step's
    # all-reduce, so both stop after step 3 (a stop on one rank alone would deadlock the next collective)
    second = run(TrainConfig(**vae_config, devices=2), small_digits, resume=True, on_step=StopAt((1, 2)))
    assert second.stop_reason == "interrupted"
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 3) and ckpt["config"]["devices"] == 2
    assert len(second.history) == 1 and math.isfinite(second.history[0]["train_loss"])
    assert math.isfinite(second.history[0]["val_elbo"])
    assert not (out / "summary.json").exists()

    third = run(TrainConfig(**vae_config), small_digits, resume=True)
    assert third.stop_reason == "completed" and [r["epoch"] for r in third.history] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_elbo"]) for r in third.history)


# -- 4. errors -----------------------------------------------------------------------------------------

def test_a_worker_error_reaches_the_caller_with_its_message(tmp_path, small_digits):
    cfg = config(tmp_path / "run", model=spec("ParamStoreAutoencoder"), devices=2)
    with pytest.raises(ValueError, match=r"pyro\.param parameters are not in the module.*decoder_bias"):
        run(cfg, small_digits)


def test_a_worker_error_keeps_its_command_line_wording():
    """An error a process raises in Python's words with the command line's attached (usage_error) reaches the
    launcher with both, so `pyro-vae train --devices 2` prints flags, not arguments."""
    from pyro_vae.likelihoods import LikelihoodError
    from pyro_vae.wording import cli_message, usage_error
    sent = launch._describe(usage_error(LikelihoodError, "use binarize='dynamic'", "use --binarize dynamic"))
    error = launch._worker_error([("error", 1, sent)], RuntimeError("process 1 exited"))
    assert type(error) is LikelihoodError and str(error) == "use binarize='dynamic'"
    assert cli_message(error) == "use --binarize dynamic"
    unknown = ("no_such_module", "Gone", "use resume=True", "use --resume")       # a type the launcher cannot rebuild
    error = launch._worker_error([("error", 0, unknown)], RuntimeError("process 0 exited"))
    assert isinstance(error, RuntimeError) and str(error).endswith("use resume=True")
    assert cli_message(error).endswith("use --resume")


def test_a_process_dying_after_every_process_finished_is_a_warning_not_a_failure():
    """A gloo process can abort while its interpreter exits; once every rank has passed the last barrier the run
    folder is complete, so the launcher warns.  Before that, or with an error reported, the failure stands."""
    died = RuntimeError("process 1 terminated with signal SIGABRT")
    finished = [("done", 0, "completed"), ("finished", 0, None), ("finished", 1, None)]
    with pytest.warns(UserWarning, match="died while exiting.*outputs are complete"):
        assert launch._teardown_failure(finished, died, world=2) is None
    assert launch._teardown_failure(finished[:2], died, world=2) is died            # rank 1 had not finished
    error = ("error", 1, ("builtins", "ValueError", "bad", None))
    assert launch._teardown_failure(finished + [error], died, world=2) is died
    assert launch._teardown_failure(finished, None, world=2) is None


def test_param_store_parameters_are_refused_before_any_process_group(tmp_path, small_digits):
    pyro.clear_param_store()
    module = ParamStoreAutoencoder(small_digits.data_dim)
    with pytest.raises(ValueError, match="decoder_bias.*devices=1"):
        Trainer(module, small_digits, config(tmp_path / "run", devices=2),
                parallel=parallel.DDPGroup(0, 2, torch.device("cpu")))
    with pytest.raises(ValueError, match="would drift apart"):
        parallel.require_module_parameters(["a", "b"])
    parallel.require_module_parameters([])   # module parameters only: fine


def test_more_devices_than_batch_points_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"batch_size \(2\) must be >= devices \(4\)"):
        TrainConfig(batch_size=2, devices=4)
    with pytest.raises(ValueError, match="devices must be >= 1"):
        TrainConfig(devices=0)
    code = main(["train", "--devices", "4", "--batch-size", "2", "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 1 and "must be >= devices (4)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_devices_may_change_on_resume():
    from pyro_vae.config import RESUMABLE_CHANGES, check_resume
    assert "devices" in RESUMABLE_CHANGES
    check_resume(TrainConfig(devices=2).to_dict(), TrainConfig(devices=1), Path("x"))


def test_on_step_must_be_picklable_with_several_devices(tmp_path, small_digits):
    with pytest.raises(ValueError, match="on_step must be picklable"):
        run(config(tmp_path / "run", devices=2), small_digits, on_step=lambda *args: None)


def test_gpus_are_counted_before_starting(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="needs one GPU per process, but 1 is visible"):
        launch.check_devices(TrainConfig(devices=2, device="cuda"))


# -- 5. the pieces -------------------------------------------------------------------------------------

@pytest.mark.parametrize("num, world", [(9, 2), (1, 2), (7, 3), (10, 4), (0, 2)])
def test_shards_cover_a_batch_without_overlap(num, world):
    idx = torch.randperm(100)[:num]
    shares = [parallel.DDPGroup(r, world, torch.device("cpu")).shard(idx) for r in range(world)]
    assert torch.equal(torch.cat(shares), idx)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    for r, share in enumerate(shares):
        start, stop = parallel.shard_bounds(num, r, world)
        assert torch.equal(share, idx[start:stop])


def test_rank_seeds_differ_and_are_valid_seeds():
    from pyro_vae.seeds import seed_for
    seeds = {seed_for(0, "rank", e, s, r) for e in range(3) for s in range(3) for r in range(1, 4)}
    assert len(seeds) == 27 and all(0 <= s < 2 ** 32 for s in seeds)
    assert seed_for(5, "rank", 1, 2, 1) == seed_for(5, "rank", 1, 2, 1)
