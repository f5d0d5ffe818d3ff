"""``pyro-vae evaluate --method ais``, ``evaluate --gaps`` and ``pyro-vae bdmc`` end to end on a tiny run:
what they print, the JSON and figures they write, and their one-line errors."""
import json

import pytest

from pyro_vae.cli import build_parser, main
from test_cli import TINY, assert_png

SMALL_AIS = ["--ais-steps", "10", "--chains", "4", "--leapfrog-steps", "2", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ais-cli") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--no-figures", "--out", str(out)]) == 0
    return out


def test_evaluate_with_ais_prints_and_writes_per_point_json(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "--method", "ais", "--num", "8", "--out", str(tmp_path), *SMALL_AIS]) == 0
    printed = capsys.readouterr().out
    assert "log p(x) = " in printed and "(AIS, 10 steps x 4 chains from the guide" in printed
    record = json.loads((tmp_path / "ais_test.json").read_text())
    assert record["num_points"] == 8 and len(record["log_likelihood"]) == 8 and record["num_chains"] == 4
    assert len(record["log_weights"]) == 4 and len(record["acceptance_rate"]) == 8
    assert -80 < record["mean"] < -10


def test_evaluate_gaps_prints_cremers_table_and_draws_the_bars(run, tmp_path, capsys):
    argv = ["evaluate", str(run), "--gaps", "--num", "6", "--num-samples", "50", "--optimal-steps", "60",
            "--out", str(tmp_path), *SMALL_AIS]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "inference gap" in printed and "| approximation gap: log p(x) - ELBO[q*] |" in printed
    record = json.loads((tmp_path / "gaps_test.json").read_text())
    assert len(record["amortization_gap"]) == 6 and record["settings"]["optimal_steps"] == 60
    assert_png(tmp_path / "gaps_test.png")


def test_bdmc_command_writes_bounds_per_step_count_and_the_figure(run, tmp_path, capsys):
    argv = ["bdmc", str(run), "--num-points", "5", "--ais-steps", "3,20", "--chains", "4", "--leapfrog-steps", "2",
            "--num-samples", "50", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "BDMC on 5 simulated points, 20 steps" in printed and "| 3 |" in printed
    record = json.loads((tmp_path / "bdmc.json").read_text())
    assert [b["num_steps"] for b in record["bounds"]] == [3, 20] and len(record["bounds"][0]["gap"]) == 5
    assert_png(tmp_path / "bdmc.png")
    assert build_parser().parse_args(["bdmc", "RUN"]).ais_steps == [100, 1000, 10000]


def test_ais_with_globals_is_a_one_line_error(run, capsys):
    assert main(["evaluate", str(run), "--method", "ais", "--globals", "condition", *SMALL_AIS]) == 1
    assert "--globals is for --method is" in capsys.readouterr().err


def test_compile_with_ais_is_a_one_line_error(run, capsys):
    assert main(["evaluate", str(run), "--method", "ais", "--compile", "fused", *SMALL_AIS]) == 1
    assert "--compile is for importance sampling" in capsys.readouterr().err
