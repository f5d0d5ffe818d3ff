"""Every checkpoint that will not load says why in one line of our own (issue 11), never torch's text."""

import pytest
import torch

from pyro_vae.checkpoint import FORMAT, load_checkpoint
from pyro_vae.cli import main

SIDE_EFFECT = []


class _RunsCode:
    """Pickles to a call of SIDE_EFFECT.append: what a malicious checkpoint would do when loaded."""

    def __reduce__(self):
        return SIDE_EFFECT.append, ("ran",)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--no-progress", "--no-figures",
                 "--out", str(out)]) == 0
    return out


def test_a_metrics_or_config_file_is_named_as_not_a_checkpoint(run_folder, capsys):
    for name in ("metrics.jsonl", "config.json"):
        assert main(["evaluate", str(run_folder / name), "--num-samples", "2", "--no-progress"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not a file torch.save wrote" in err[0], err


def test_a_truncated_checkpoint(run_folder, tmp_path):
    data = (run_folder / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or damaged") as info:
        load_checkpoint(cut)
    assert info.value.__cause__ is None and "Please file an issue" not in str(info.value)


def test_a_pickle_that_would_run_code_never_runs_it(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"model_state": {}, "payload": _RunsCode()}, bad)
    with pytest.raises(ValueError, match="Python objects beyond tensors.*refusing"):
        load_checkpoint(bad)
    assert SIDE_EFFECT == []


def test_a_checkpoint_from_a_newer_version(run_folder, tmp_path):
    ckpt = torch.load(run_folder / "checkpoint.pt", weights_only=True)
    assert ckpt["format"] == FORMAT
    ckpt["format"] = "pyro_vae.checkpoint.v7"
    newer = tmp_path / "newer.pt"
    torch.save(ckpt, newer)
    with pytest.raises(ValueError, match="newer pyro_vae .*v7.*upgrade"):
        load_checkpoint(newer)
    assert load_checkpoint(run_folder / "best.pt")["format"] == FORMAT


def test_a_checkpoint_of_another_config_is_refused_on_resume(run_folder, capsys):
    assert main(["train", "--out", str(run_folder), "--resume", "--lr", "0.5", "--no-progress"]) == 1
    assert "cannot resume" in capsys.readouterr().err
