"""Models declared on the contract (pyro_vae.contract, docs/declaring_models.md): the worked examples train
and evaluate, the docs' code runs as shown, and a broken contract is a clear error."""
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae import MLPDecoder, MLPEncoder, ModelGuideContractError, evaluate, log_likelihood
from pyro_vae.cli import build_parser, main
from pyro_vae.contract import check_model
from pyro_vae.data import load_dataset
from pyro_vae.examples.conditional import ConditionalVAE
from pyro_vae.examples.two_layer import TwoLayerVAE
from pyro_vae.factory import load_vae
from pyro_vae.training import TrainConfig, Trainer

DOCS = Path(__file__).resolve().parent.parent / "docs" / "declaring_models.md"


def doc_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), flags=re.S)


def doc_commands():
    lines = []
    for block in doc_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("pyro-vae"):
                lines.append(line.strip())
    return lines


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", binarize="static")


# -- the docs ------------------------------------------------------------------------------------------

def test_docs_followed_in_order_succeed(tmp_path, monkeypatch, capsys):
    """A user following docs/declaring_models.md in order: save the twenty-line block as mymodels.py, run it
    (`python mymodels.py`: trains and evaluates), then run the command-line section's commands in the same
    folder, which import the class from mymodels.py (without training it again) into a run folder of their own.
    The commands get flags that only make them quicker, so a collision of their folders still fails here."""
    import runpy
    import sys
    block, _ = doc_blocks("python")
    assert len([line for line in block.strip().splitlines() if line.strip()]) <= 28   # it is short
    assert block.startswith("# mymodels.py\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    (tmp_path / "mymodels.py").write_text(block)
    pyro.set_rng_seed(0)
    runpy.run_path("mymodels.py", run_name="__main__")                     # python mymodels.py
    printed = capsys.readouterr().out
    value = float(re.search(r"test log p\(x\) = (-?\d+\.\d+) ± (\d+\.\d+) nats", printed).group(1))
    # a Laplace density over [0,1]^64: about +19 after 10 epochs, about -150 untrained
    assert -60 < value < 150, printed
    assert len(list((tmp_path / "runs").glob("*/checkpoint.pt"))) == 1              # the script's run
    quicker = {"train": ["--epochs", "1", "--no-progress", "--no-figures"],
               "evaluate": ["--num", "30", "--num-samples", "20", "--no-progress"]}
    cli = [line for line in doc_commands() if "mymodels" in line or "runs/laplace" in line]
    assert [shlex.split(line)[1] for line in cli] == ["train", "evaluate"]
    try:
        for line in cli:
            argv = shlex.split(line)[1:]
            assert main(argv + quicker[argv[0]]) == 0, (line, capsys.readouterr().err)
        # (had the import trained, its second run into the script's folder would have been refused: exit 1 above)
        assert "log p(x) =" in capsys.readouterr().out
        assert type(pyro_vae.load("runs/laplace")).__name__ == "LaplaceVAE"        # as the docs say after it
    finally:
        sys.modules.pop("mymodels", None)


def test_docs_global_latent_example_reports_both_figures_under_their_names(tmp_path, monkeypatch, capsys):
    _, block = doc_blocks("python")
    monkeypatch.chdir(tmp_path)
    pyro.set_rng_seed(0)
    exec(compile(block, "docs/declaring_models.md (global latents)", "exec"), {})
    printed = capsys.readouterr().out
    conditional = float(re.search(r"^log p\(x \| b\) = (-?\d+\.\d+) ± \d+\.\d+ nats$", printed, re.M).group(1))
    joint = float(re.search(r"^log p\(X\)/N = (-?\d+\.\d+) ± \d+\.\d+ nats per point", printed, re.M).group(1))
    # digits after 10 epochs: about -27 each (untrained about -45)
    assert -35 < conditional < -20 and -35 < joint < -20, printed
    assert abs(conditional - joint) < 3, printed


def test_global_latent_model_from_the_cli(tmp_path, monkeypatch, capsys):
    """The docs' SharedBiasVAE as a --model: IWAE training and plain `evaluate` refuse it with its global site
    named; `--globals condition|joint` print their own quantities."""
    _, block = doc_blocks("python")
    (tmp_path / "shared_bias.py").write_text(block.split("data = load_dataset")[0])
    monkeypatch.chdir(tmp_path)
    base = ["train", "--model", "shared_bias:SharedBiasVAE", "--binarize", "static", "--epochs", "1", "--no-progress",
            "--no-figures"]
    assert main(base + ["--loss", "iwae", "--num-particles", "3", "--out", "iwae"]) == 1
    assert "['b'] sit outside the data plate" in capsys.readouterr().err
    assert main(base + ["--out", "run"]) == 0
    capsys.readouterr()
    evaluate_run = ["evaluate", "run", "--num", "30", "--num-samples", "20", "--no-progress"]
    assert main(evaluate_run) == 1
    err = capsys.readouterr().err
    assert "['b'] sit outside the data plate" in err and "--globals condition|joint" in err
    assert main(evaluate_run + ["--globals", "condition"]) == 0
    assert re.match(r"log p\(x \| b\) = -\d+\.\d\d ± \d+\.\d\d nats\n", capsys.readouterr().out)
    assert main(evaluate_run + ["--globals", "joint", "--num-global-samples", "4"]) == 0
    printed = capsys.readouterr().out
    assert re.match(r"log p\(X\)/N = -\d+\.\d\d ± \d+\.\d\d nats per point \(joint over 30 points", printed)
    assert json.loads((tmp_path / "run" / "evaluation_test.json").read_text())["num_global_samples"] == 4


@pytest.mark.parametrize("line", doc_commands())
def test_docs_commands_parse(line):
    argv = shlex.split(line)[1:]
    assert build_parser().parse_args(argv).command == argv[0]


def test_docs_model_arg_reaches_the_factory(tmp_path):
    line = next(c for c in doc_commands() if "two_layer" in c)
    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)
    assert args.model_args == {"latent1_dim": 100, "hidden2": [100, 100]}


# -- the two-layer VAE -----------------------------------------------------------------------------------

def test_two_layer_vae_iwae_bound_is_tighter_than_elbo_after_short_training(tmp_path, digits):
    pyro.set_rng_seed(0)
    model = TwoLayerVAE(digits.data_dim, latent_dim=4, hidden=(64,), latent1_dim=8, hidden2=(32,))
    config = TrainConfig(epochs=8, loss="iwae", num_particles=5, out=str(tmp_path / "run"), patience=0)
    trainer = Trainer(model, digits, config, progress=False)
    assert trainer.fit() == "completed"
    assert trainer.history[-1]["val_bound"] > trainer.history[0]["val_bound"]   # it learns (IWAE_5)
    assert all(row["val_bound_name"] == "IWAE_5" for row in trainer.history)
    torch.manual_seed(1)
    summary = evaluate(model.model, model.guide, digits.test, num_samples=200)
    # held-out: IWAE_k grows with k above the ELBO (both latent layers weighted jointly)
    curve = summary.iwae_curve
    assert summary.elbo < curve[5] < curve[50] <= summary.mean + 1e-6
    assert summary.mean - summary.elbo > 5 * summary.stderr_mc, summary
    lp = log_likelihood(model.model, model.guide, digits.test[:20], num_samples=50)
    assert lp.shape == (20,) and torch.isfinite(lp).all()


def test_two_layer_vae_shapes_under_particles(digits):
    model = TwoLayerVAE(digits.data_dim, latent_dim=3, hidden=(16,), latent1_dim=5, hidden2=(8,))
    from pyro_vae import log_weights
    lw = log_weights(model.model, model.guide, digits.test[:7], num_particles=4)
    assert lw.shape == (4, 7)
    trace = pyro.poutine.trace(model.guide).get_trace(digits.test[:7])
    assert trace.nodes["z1"]["value"].shape == (7, 5) and trace.nodes["z2"]["value"].shape == (7, 3)
    assert model.sample(6).shape == (6, digits.data_dim) and model.reconstruct(digits.test[:2]).shape == (2, 64)


def test_two_layer_vae_trains_with_dreg_from_the_cli(tmp_path, capsys):
    """Review finding 5: the IWAE paper's two-layer model with the estimator that suits it (was refused)."""
    out = tmp_path / "dreg"
    assert main(["train", "--model", "pyro_vae.examples.two_layer:TwoLayerVAE", "--loss", "iwae", "--num-particles",
                 "3", "--gradient", "dreg", "--hidden", "32", "--latent-dim", "4", "--model-arg", "latent1_dim=8",
                 "--model-arg", "hidden2=[16]", "--epochs", "2", "--out", str(out), "--no-progress",
                 "--no-figures"]) == 0
    assert "best validation IWAE_3 bound" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["val_bound"] > rows[0]["val_bound"] and rows[1]["val_elbo"] < rows[1]["val_bound"]


# -- the conditional VAE, from the command line ------------------------------------------------------------

def test_conditional_vae_trains_from_cli_uses_labels_and_samples_a_chosen_class(tmp_path, capsys):
    out = tmp_path / "cvae"
    code = main(["train", "--model", "pyro_vae.examples.conditional:ConditionalVAE", "--epochs", "15",
                 "--hidden", "128", "--no-progress", "--no-figures", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["user_model"] == "pyro_vae.examples.conditional:ConditionalVAE"
    assert ckpt["user_model_kwargs"]["num_classes"] == 10 and ckpt["user_model_kwargs"]["hidden"] == [128]
    model, config = load_vae(out)
    assert isinstance(model, ConditionalVAE)
    data = load_dataset("digits", binarize="static")   # test split binarized as in training
    x, y = data.test[:200], data.test_labels[:200]
    torch.manual_seed(0)
    right = log_likelihood(model.model, model.guide, x, y=y, num_samples=100)
    wrong = log_likelihood(model.model, model.guide, x, y=(y + 1) % 10, num_samples=100)
    # the labels carry information the model uses: the true label explains x better than a wrong one
    assert (right - wrong).mean() > 5 * (right - wrong).std() / len(x) ** 0.5
    assert main(["sample", str(out), "--label", "3", "--num", "8", "--out", str(tmp_path / "threes")]) == 0
    assert np.load(tmp_path / "threes.npy").shape == (8, 64)
    assert main(["sample", str(out), "--num", "8", "--out", str(tmp_path / "none")]) == 1
    assert "--label" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--num", "30", "--num-samples", "20", "--no-progress"]) == 0
    assert "log p(x) =" in capsys.readouterr().out


# -- the contract is enforced --------------------------------------------------------------------------------

class LatentOutsidePlate(nn.Module):
    """Breaks the contract: its per-datapoint latent z is declared outside the data plate."""

    def __init__(self, data_dim=64, latent_dim=2):
        super().__init__()
        self.encoder, self.decoder = MLPEncoder(data_dim, latent_dim, (8,)), MLPDecoder(latent_dim, data_dim, (8,))

    def model(self, x, num_data=None):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(2))
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        pyro.sample("z", dist.Normal(*self.encoder(x)).to_event(2))


class PlateWithoutNumData(LatentOutsidePlate):
    """Breaks the contract: the plate ignores num_data, so minibatches would not be scaled by N / B."""

    def model(self, x, num_data=None):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(*self.encoder(x)).to_event(1))


def test_contract_error_names_the_site_outside_the_data_plate(digits, tmp_path, capsys):
    with pytest.raises(ModelGuideContractError, match="'z' of the guide is not inside the data plate 'data'"):
        check_model(LatentOutsidePlate(), digits.test[:5], num_data=100)
    with pytest.raises(ModelGuideContractError, match="has size 3 .* num_data=100"):
        check_model(PlateWithoutNumData(), digits.test[:5], num_data=100)
    with pytest.raises(ModelGuideContractError, match="not inside the data plate"):
        Trainer(LatentOutsidePlate(), digits, TrainConfig(out=str(tmp_path / "t")), progress=False)
    # from the command line: the same message, no traceback
    code = main(["train", "--model", "test_examples:LatentOutsidePlate", "--epochs", "1", "--no-progress",
                 "--no-figures", "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 1 and "'z' of the guide is not inside the data plate" in err and "Traceback" not in err


@pytest.mark.parametrize("spec, message", [("no_colon", "package.module:Name"),
                                           ("no_such_module_xyz:Model", "cannot import"),
                                           ("pyro_vae.examples.two_layer:Nope", "no attribute 'Nope'")])
def test_bad_model_spec_is_a_clear_error(spec, message, tmp_path, capsys):
    assert main(["train", "--model", spec, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "x")]) == 1
    assert message in capsys.readouterr().err


def test_model_arg_the_factory_does_not_take_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--model", "pyro_vae.examples.two_layer:TwoLayerVAE", "--model-arg", "bogus=1",
                 "--epochs", "1", "--no-progress", "--out", str(tmp_path / "x")]) == 1
    assert "bogus" in capsys.readouterr().err


# -- the contract's edges (from review) ------------------------------------------------------------------------

class WithGlobalFactorAndRecord(LatentOutsidePlate):
    """Keeps the contract: a global penalty (pyro.factor) and a record (pyro.deterministic) outside the plate."""

    def model(self, x, num_data=None):
        pyro.factor("weight_penalty", -1e-3 * sum(p.pow(2).sum() for p in self.decoder.parameters()))
        pyro.deterministic("temperature", torch.tensor(1.0))
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(*self.encoder(x)).to_event(1))


class PlateNeedsNumData(WithGlobalFactorAndRecord):
    """Breaks the contract: pyro.plate('data', num_data, ...) fails when called without num_data (evaluation)."""

    def model(self, x, num_data=None):
        with pyro.plate("data", num_data, subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


class WithBatchNorm(WithGlobalFactorAndRecord):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(64)

    def guide(self, x, num_data=None):
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(*self.encoder(self.norm(x))).to_event(1))


class ParamStoreModel(WithGlobalFactorAndRecord):
    def model(self, x, num_data=None):
        bias = pyro.param("bias", torch.zeros(64))
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) + bias).to_event(1), obs=x)


def test_global_factor_and_deterministic_sites_keep_the_contract(digits):
    check_model(WithGlobalFactorAndRecord(), digits.test[:5], num_data=100)


def test_a_plate_that_needs_num_data_is_named_before_training(digits):
    with pytest.raises(ModelGuideContractError, match="num_data=None failed.*num_data or len"):
        check_model(PlateNeedsNumData(), digits.test[:5], num_data=100)


def test_checking_leaves_batch_norm_statistics_alone(digits):
    module = WithBatchNorm()
    before = {k: v.clone() for k, v in module.norm.state_dict().items()}
    check_model(module, digits.test[:5], num_data=100)
    assert all(torch.equal(before[k], v) for k, v in module.norm.state_dict().items())


def test_custom_plate_names_still_train(digits, tmp_path):
    from pyro_vae import IWAE_ELBO, build_vae
    vae = build_vae(64, 2, (8,))
    vae.data_plate = "batch"
    trainer = Trainer(vae, digits, TrainConfig(epochs=1, out=str(tmp_path / "p")), IWAE_ELBO(3, plate="batch"),
                      progress=False)
    assert trainer.fit() == "completed"


def test_a_checkpoint_cannot_name_an_arbitrary_function():
    from pyro_vae.contract import build_user_model
    with pytest.raises(ValueError, match="must name a torch.nn.Module subclass"):
        build_user_model("os:system", {}, {"command": "echo pwned"})


def test_model_flag_with_pyro_param_outside_the_module_is_refused(tmp_path, capsys):
    assert main(["train", "--model", "test_examples:ParamStoreModel", "--epochs", "1", "--no-progress",
                 "--no-figures", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "bias" in err and "nn.Parameter" in err


def test_factory_defaults_hold_unless_a_flag_changes_them(tmp_path):
    from pyro_vae.launch import train
    pyro.set_rng_seed(0)
    result = train(TrainConfig(model="pyro_vae.examples.two_layer:TwoLayerVAE", epochs=1, patience=0,
                               out=str(tmp_path / "a")), progress=False, figures=False)
    assert result.model.latent_dim == 50 and result.model.latent1_dim == 100     # the paper's, not --latent-dim 8
    with pytest.warns(UserWarning, match="does not take likelihood"):
        train(TrainConfig(model="pyro_vae.examples.two_layer:TwoLayerVAE", epochs=1, patience=0, latent_dim=3,
                          likelihood="continuous-bernoulli", binarize="dynamic", out=str(tmp_path / "b")),
              progress=False, figures=False)
