"""benchmarks/scaling.py says what it measures: the steps it reports are the steps it runs (digits, when
Fashion-MNIST is missing, are repeated to fill them), and a device it cannot use is a one-line error."""
import math

import pytest
import torch

from benchmarks import scaling
from pyro_vae import sources


def test_scaling_runs_the_steps_it_reports_on_digits(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "none"))
    data, name, config = scaling.setting(30, str(tmp_path))            # no Fashion-MNIST: digits
    assert name.startswith("digits") and "repeated to fill 30 batches" in name
    assert len(data.train) == 30 * config["batch_size"]                  # 30 full steps, not digits' 13
    data, name, config = scaling.setting(5, str(tmp_path))
    assert math.ceil(len(data.train) / config["batch_size"]) == 5 and "repeated" not in name


@pytest.mark.parametrize("argv, message", [(["--device", "cuda"], "CUDA is not available"),
                                           (["--devices", "1,two"], "comma-separated process counts"),
                                           (["--device", "gpu"], "device must be cpu, cuda, cuda:N or auto")])
def test_scaling_device_problems_are_one_line_errors(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as done:
        scaling.main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and "Traceback" not in err
    assert "error: " in err.strip().splitlines()[-1]
