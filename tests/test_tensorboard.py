"""TensorBoard logging (pyro_vae.tensorboard_hook, ``pyro-vae train --tensorboard``): the event files of short runs on
the embedded digits, read back with tensorboard's own readers: scalars under honest names, image grids, the hparams
tab; a resumed run continues the stream without writing any step twice; a missing package is a clear error before
any training."""
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from pyro_vae.cli import main
from pyro_vae.config import TrainConfig, load_config_file
from pyro_vae.data import load_dataset
from pyro_vae.launch import train
from pyro_vae.config import check_resume
from pyro_vae.tensorboard_hook import INSTALL, LOG_DIR, TensorBoardLogger, TensorBoardMissing
from pyro_vae.training import Trainer
from pyro_vae.vae import build_vae

TINY = ["--hidden", "16", "--latent-dim", "2", "--no-figures", "--no-progress", "--patience", "0", "--compile", "off"]


def tensorboard_readers():
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator, event_file_loader
    return event_accumulator, event_file_loader


def accumulated(log_dir: Path):
    """What TensorBoard shows: the folder's event files through its EventAccumulator, nothing sampled away."""
    event_accumulator, _ = tensorboard_readers()
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def raw_steps(log_dir: Path):
    """Every (tag, step) written, from the raw records of every event file (no purging, no deduplication)."""
    _, event_file_loader = tensorboard_readers()
    written = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in event_file_loader.EventFileLoader(str(path)).Load():
            written += [(value.tag, event.step) for value in event.summary.value]
    return written


def hparams_of(acc):
    """The hparams plugin's session start info (the run's settings) as a dict, and its metric tags."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    values = {k: (v.string_value or v.number_value or v.bool_value) for k, v in start.hparams.items()}
    return values, [m.name.tag for m in experiment.metric_infos]


def test_a_3_epoch_run_writes_scalars_images_and_hparams(tmp_path):
    tensorboard_readers()
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "3", "--loss", "iwae", "--num-particles", "3", "--tensorboard",
                 "--tensorboard-images-every", "2", "--out", str(out)]) == 0
    acc = accumulated(out / LOG_DIR)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the validation bound under its honest name; the ELBO beside it; the same numbers as metrics.jsonl
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "val/IWAE_3_bound", "val/ELBO", "train/lr", "train/beta"} <= set(tags), tags
    assert not any("IWAE" in tag and "ELBO" in tag for tag in tags)
    for tag, key in [("train/loss", "train_loss"), ("val/IWAE_3_bound", "val_bound"), ("val/ELBO", "val_elbo"),
                     ("train/lr", "lr"), ("train/beta", "beta")]:
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3]
        assert [e.value for e in acc.Scalars(tag)] == pytest.approx([row[key] for row in rows], rel=1e-6)
    # image grids at the first epoch, every 2nd and the last: reconstructions in row pairs, samples
    images = acc.Tags()["images"]
    assert set(images) == {"images/reconstructions", "images/samples"}
    for tag in images:
        assert [e.step for e in acc.Images(tag)] == [1, 2, 3]
        assert acc.Images(tag)[-1].width > 200 and acc.Images(tag)[-1].encoded_image_string[:4] == b"\x89PNG"
    # the hparams tab: settings and final metrics, in the run's own folder (no timestamped subfolder)
    values, metrics = hparams_of(acc)
    assert values["loss"] == "iwae" and values["num_particles"] == 3 and values["hidden"] == "[16]"
    assert "out" not in values
    summary = json.loads((out / "summary.json").read_text())
    assert {"hparams/best_val_IWAE_3_bound", "hparams/test_IWAE_3_bound", "hparams/test_ELBO"} <= set(metrics)
    assert acc.Scalars("hparams/test_IWAE_3_bound")[-1].value == pytest.approx(summary["test_bound"], rel=1e-6)
    assert [p.name for p in (out / LOG_DIR).iterdir() if p.is_dir()] == []


def test_a_resumed_run_continues_the_stream_without_repeating_a_step(tmp_path):
    tensorboard_readers()
    out = tmp_path / "run"
    config = TrainConfig(hidden=(16,), latent_dim=2, epochs=3, patience=0, tensorboard=True,
                         tensorboard_images_every=1, compile="off", out=str(out))

    def stop_in_epoch_3(trainer, epoch, step, loss):
        if epoch == 2 and step == 4:
            trainer.request_stop()

    result = train(config, progress=False, figures=False, on_step=stop_in_epoch_3)
    assert result.stop_reason == "interrupted" and len(result.history) == 2
    before = accumulated(out / LOG_DIR)
    assert [e.step for e in before.Scalars("val/ELBO")] == [1, 2]
    assert "hparams" not in before.Tags() and not any(tag.startswith("hparams/") for tag in before.Tags()["scalars"])
    with pytest.raises(KeyError):                   # an interrupted fit is not finished: no hparams yet
        before.PluginTagToContent("hparams")

    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0           # to epoch 3
    assert main(["train", "--out", str(out), "--resume", "--epochs", "4", "--no-progress"]) == 0   # and on to 4
    written = raw_steps(out / LOG_DIR)
    repeated = [key for key, count in Counter(written).items() if count > 1 and not key[0].startswith("_hparams_")]
    assert not repeated, repeated
    acc = accumulated(out / LOG_DIR)
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), (tag, steps)
    assert [e.step for e in acc.Scalars("val/ELBO")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Images("images/samples")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("hparams/test_ELBO")] == [3, 4]     # each finish at its own last epoch
    # the settings are those a resume cannot change, so every finish writes the same ones (TensorBoard keeps the
    # first); the finishes differ in their metrics, the latest at the latest step
    _, event_file_loader = tensorboard_readers()
    starts = [value.metadata.plugin_data.content for path in sorted((out / LOG_DIR).glob("events.out.tfevents.*"))
              for event in event_file_loader.EventFileLoader(str(path)).Load() for value in event.summary.value
              if value.tag == "_hparams_/session_start_info"]
    assert len(starts) == 2 and starts[0] == starts[1]
    values, _ = hparams_of(acc)
    assert "epochs" not in values and values["latent_dim"] == 2
    assert [e.value for e in acc.Scalars("hparams/epochs_run")] == [3, 4]


def test_tensorboard_may_be_turned_on_when_resuming(tmp_path):
    tensorboard_readers()
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert not (out / LOG_DIR).exists()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--tensorboard", "--no-progress"]) == 0
    assert [e.step for e in accumulated(out / LOG_DIR).Scalars("train/loss")] == [2]


def test_a_missing_tensorboard_is_a_clear_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)       # as if the package were not installed
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--tensorboard", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae train: error: ") and len(err.strip().splitlines()) == 1, err
    assert "tensorboard package" in err and INSTALL in err and "Traceback" not in err
    assert not out.exists()                                                  # nothing was started
    with pytest.raises(TensorBoardMissing, match=r"pip install 'pyro_vae\[tensorboard\]'"):
        train(TrainConfig(epochs=1, hidden=(16,), latent_dim=2, tensorboard=True, out=str(out)), progress=False)
    assert not out.exists()
    assert issubclass(TensorBoardMissing, ImportError)


def test_the_trainer_adds_the_logger_a_config_asks_for_and_says_why_images_are_skipped(tmp_path, capsys):
    tensorboard_readers()
    digits = load_dataset("digits", None, "dynamic", None, 0)
    flat = dataclasses.replace(digits, image_shape=None)                    # data that are not pictures
    config = TrainConfig(hidden=(16,), latent_dim=2, epochs=2, patience=0, tensorboard=True, compile="off",
                         out=str(tmp_path / "r"))
    trainer = Trainer(build_vae(flat.data_dim, latent_dim=2, hidden=(16,)), flat, config, progress=False)
    assert sum(isinstance(hook, TensorBoardLogger) for hook in trainer.hooks) == 1
    assert trainer.fit() == "completed"
    assert capsys.readouterr().err.count("tensorboard: no image grids (the data have no image shape)") == 1
    acc = accumulated(tmp_path / "r" / LOG_DIR)
    assert not acc.Tags()["images"] and [e.step for e in acc.Scalars("val/ELBO")] == [1, 2]
    assert "hparams/best_val_ELBO" in hparams_of(acc)[1]        # the Trainer alone writes the hparams at its end


def test_configs_from_before_tensorboard_still_read_and_resume(tmp_path):
    old = {k: v for k, v in TrainConfig(out=str(tmp_path)).to_dict().items() if not k.startswith("tensorboard")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert TrainConfig.from_dict(load_config_file(tmp_path / "config.json")).tensorboard is False
    check_resume(old, TrainConfig(out=str(tmp_path), tensorboard=True, tensorboard_images_every=3),
                         tmp_path / "checkpoint.pt")                  # turning the logging on is no config change
