"""The trainer's hooks (pyro_vae.hooks) and its explicit state (training.TrainState): the events a hook sees and
their order, a hook ending a fit, the clean-up after an error, and parts (optimiser, schedule) handed in."""
import signal

import pytest
import torch

from pyro_vae.checkpoint import CHECKPOINT, load_checkpoint
from pyro_vae.data import load_dataset
from pyro_vae.hooks import Hook
from pyro_vae.training import TrainConfig, Trainer, TrainState
from pyro_vae.vae import build_vae

STEPS_PER_EPOCH = 13   # ceil(1257 / 100)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, "dynamic", None, 0)


def tiny_trainer(digits, out, hooks=(), **overrides):
    config = TrainConfig(**{**dict(hidden=(16,), latent_dim=2, epochs=2, patience=0, out=str(out)), **overrides})
    torch.manual_seed(0)
    vae = build_vae(digits.data_dim, latent_dim=config.latent_dim, hidden=config.hidden)
    return Trainer(vae, digits, config, progress=False, hooks=hooks)


class Recorder(Hook):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def on_fit_start(self, trainer):
        self.log.append((self.name, "start", trainer.state.epoch))

    def on_step_end(self, trainer, loss):
        self.log.append((self.name, "step", trainer.state.epoch, trainer.state.step))

    def on_epoch_end(self, trainer, row):
        assert trainer.state.history[-1] is row
        self.log.append((self.name, "epoch", row["epoch"], trainer.state.step))

    def on_fit_end(self, trainer, reason):
        self.log.append((self.name, "end", reason))


def test_a_hook_sees_every_event_in_order(tmp_path, digits):
    log = []
    trainer = tiny_trainer(digits, tmp_path / "run", hooks=[Recorder("a", log), Recorder("b", log)])
    assert trainer.fit() == "completed"
    a = [entry[1:] for entry in log if entry[0] == "a"]
    steps = [("step", e, s) for e in range(2) for s in range(1, STEPS_PER_EPOCH + 1)]
    assert a == ([("start", 0)] + steps[:STEPS_PER_EPOCH] + [("epoch", 1, 0)] + steps[STEPS_PER_EPOCH:]
                 + [("epoch", 2, 0), ("end", "completed")])
    # started in order, ended in reverse order (like nested with-blocks)
    assert log[:2] == [("a", "start", 0), ("b", "start", 0)]
    assert log[-2:] == [("b", "end", "completed"), ("a", "end", "completed")]
    # the default hooks ran first: the checkpoint of epoch 2 exists
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["epoch"] == 2


def test_a_hook_can_end_the_fit_with_its_reason(tmp_path, digits):
    class StopAfterOne(Hook):
        def stop_reason(self, trainer):
            return "enough" if trainer.state.epoch >= 1 else None

    trainer = tiny_trainer(digits, tmp_path / "run", hooks=[StopAfterOne()], epochs=5)
    assert trainer.fit() == "enough"
    assert [row["epoch"] for row in trainer.history] == [1]
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["epoch"] == 1


def test_an_error_ends_the_fit_with_no_reason_and_restores_the_signal_handlers(tmp_path, digits):
    log = []

    class Explode(Hook):
        def on_step_end(self, trainer, loss):
            if trainer.state.step == 3:
                raise RuntimeError("tracker failed")

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    trainer = tiny_trainer(digits, tmp_path / "run", hooks=[Recorder("a", log), Explode()])
    with pytest.raises(RuntimeError, match="tracker failed"):
        trainer.fit()
    assert log[-1] == ("a", "end", None)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not (tmp_path / "run" / CHECKPOINT).exists()     # nothing was saved mid-epoch on an error


def test_an_optimizer_and_schedule_handed_in_are_the_ones_stepped_and_saved(tmp_path, digits):
    config = TrainConfig(hidden=(16,), latent_dim=2, epochs=2, patience=0, out=str(tmp_path / "run"))
    vae = build_vae(digits.data_dim, latent_dim=2, hidden=(16,))
    sgd = torch.optim.SGD(vae.parameters(), lr=1e-6, momentum=0.5)   # the loss sums over N points
    halve = torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.5)
    trainer = Trainer(vae, digits, config, progress=False, optimizer=sgd, scheduler=halve)
    assert trainer.fit() == "completed"
    assert [row["lr"] for row in trainer.history] == [1e-6, 5e-7]       # the lr each epoch trained with
    saved = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert saved["optimizer"]["param_groups"][0]["momentum"] == 0.5 and saved["scheduler"]["_step_count"] == 3


def test_train_state_derives_best_epoch_and_patience_and_round_trips():
    rows = [{"epoch": e, "val_bound": v} for e, v in enumerate([-30.0, -29.0, -29.0, -29.5], start=1)]
    state = TrainState(epoch=4, step=0, epoch_loss_sum=0.0, history=rows)
    assert state.best_epoch == 2                 # the first of equals
    assert state.best_val_bound == -29.0 and state.epochs_since_best == 2
    assert TrainState().best_val_bound == float("-inf") and TrainState().is_fresh and not state.is_fresh
    saved = state.to_dict()
    assert (saved["best_epoch"], saved["epochs_since_best"]) == (2, 2)
    back = TrainState.from_checkpoint(saved, "ELBO")
    assert (back.epoch, back.step, back.history) == (4, 0, rows)
