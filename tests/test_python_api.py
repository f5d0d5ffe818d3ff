"""The Python API as users of other libraries expect it: ``pyro_vae.save``/``pyro_vae.load`` round trips (our VAE,
a ``--model`` user model, a Trainer's and the CLI's runs), ``Trainer.fit(resume=True)`` and
``pyro_vae.train(config, model=...)``, and errors raised from Python that give Python advice (``resume=True``)
while the command line keeps its flags (``--resume``)."""
import json

import pyro
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae import (VAE, BernoulliLikelihood, GaussianLikelihood, MixtureOfGaussiansPrior, MLPDecoder, MLPEncoder,
                      VampPrior, build_vae)
from pyro_vae.checkpoint import BEST, CHECKPOINT, SUMMARY
from pyro_vae.cli import main
from pyro_vae.data import load_dataset
from pyro_vae.examples import TwoLayerVAE
from pyro_vae.training import TrainConfig, Trainer


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", binarize="dynamic")


def tiny(out, **overrides) -> TrainConfig:
    values = dict(epochs=1, patience=0, compile="off", out=str(out))
    values.update(overrides)
    return TrainConfig(**values)


def small_vae(data_dim=64, latent_dim=3):
    return build_vae(data_dim, latent_dim=latent_dim, hidden=(16,))


def same_outputs(a, b, x):
    """The two models map the same inputs to the same numbers (encoder, decoder, prior density)."""
    with torch.no_grad():
        for name in ("encode", "reconstruct"):
            out_a, out_b = getattr(a, name)(x), getattr(b, name)(x)
            out_a, out_b = (out_a, out_b) if isinstance(out_a, tuple) else ((out_a,), (out_b,))
            if not all(torch.equal(u, v) for u, v in zip(out_a, out_b)):
                return False
        z = torch.randn(4, a.latent_dim, generator=torch.Generator().manual_seed(0))
        return torch.equal(a.prior().log_prob(z), b.prior().log_prob(z))


def all_eval(module):
    return not any(m.training for m in module.modules())


# -- save and load ---------------------------------------------------------------------------------------------

def test_a_vae_declared_in_python_saves_and_loads_with_identical_outputs(tmp_path, digits):
    """Our VAE assembled by hand from its parts (a VampPrior sharing the encoder, a learned Gaussian sigma):
    load rebuilds every part from the recorded constructor arguments, in eval mode, with the same weights."""
    pyro.set_rng_seed(0)
    encoder = MLPEncoder(64, latent_dim=3, hidden=(16,))
    vae = VAE(encoder=encoder, decoder=MLPDecoder(latent_dim=3, data_dim=64, hidden=(8, 8)),
              likelihood=GaussianLikelihood(sigma=0.2, learn="pixel", data_dim=64),
              prior=VampPrior(encoder, data_dim=64, latent_dim=3, num_pseudo_inputs=7))
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))            # weights no fresh construction would have
    assert vae.training
    path = pyro_vae.save(vae, tmp_path / "vae.pt")
    loaded = pyro_vae.load(path)
    assert type(loaded) is VAE and isinstance(loaded.prior, VampPrior) and all_eval(loaded)
    assert loaded.prior._encoder is loaded.encoder                      # still shared, not a copy
    assert [m.out_features for m in loaded.decoder.net if isinstance(m, nn.Linear)] == [8, 8, 64]
    vae.eval()
    assert same_outputs(vae, loaded, digits.test[:10])
    assert torch.equal(vae.likelihood.sigma, loaded.likelihood.sigma)


def test_save_load_round_trip_of_a_user_model(tmp_path, digits):
    """A --model user class built in Python: its constructor arguments are given to save (it does not record
    them); wrong ones are caught before anything is written."""
    pyro.set_rng_seed(0)
    args = dict(data_dim=64, latent_dim=3, hidden=(16,), latent1_dim=5, hidden2=(8,))
    model = TwoLayerVAE(**args)
    with pytest.raises(ValueError, match="init_args"):
        pyro_vae.save(model, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="differs in"):
        pyro_vae.save(model, tmp_path / "m.pt", init_args=dict(args, latent1_dim=6))
    assert not (tmp_path / "m.pt").exists()
    pyro_vae.save(model, tmp_path / "m.pt", init_args=args)
    loaded = pyro_vae.load(tmp_path / "m.pt")
    assert type(loaded) is TwoLayerVAE and all_eval(loaded)
    x = digits.test[:10]
    model.eval()
    assert torch.equal(model.reconstruct(x), loaded.reconstruct(x))
    assert torch.equal(model.q_z1(x)[0], loaded.q_z1(x)[0])


def test_load_reads_the_runs_of_the_cli_and_of_a_trainer_and_saves_them_again(tmp_path, digits, capsys):
    """A --model run of the command line and a Trainer run of a hand-built VAE both load from their run folder
    (best.pt), in eval mode; a model load built is saved again without being told its arguments."""
    out = tmp_path / "cli"
    assert main(["train", "--model", "pyro_vae.examples.two_layer:TwoLayerVAE", "--hidden", "16", "--latent-dim",
                 "3", "--model-arg", "latent1_dim=5", "--model-arg", "hidden2=[8]", "--epochs", "1",
                 "--no-progress", "--no-figures", "--out", str(out)]) == 0
    from_cli = pyro_vae.load(out)
    assert isinstance(from_cli, TwoLayerVAE) and from_cli.latent1_dim == 5 and all_eval(from_cli)
    pyro_vae.save(from_cli, tmp_path / "again.pt")
    x = digits.test[:10]
    assert torch.equal(pyro_vae.load(tmp_path / "again.pt").reconstruct(x), from_cli.reconstruct(x))

    pyro.set_rng_seed(0)
    vae = VAE(encoder=MLPEncoder(64, latent_dim=3, hidden=(16,)), decoder=MLPDecoder(3, 64, (16,)),
              likelihood=BernoulliLikelihood(), prior=MixtureOfGaussiansPrior(3, num_components=4))
    Trainer(vae, digits, tiny(tmp_path / "trainer"), progress=False).fit()
    from_trainer = pyro_vae.load(tmp_path / "trainer")                  # its best.pt: epoch 1, as vae now
    assert isinstance(from_trainer.prior, MixtureOfGaussiansPrior) and all_eval(from_trainer)
    assert same_outputs(vae.eval(), from_trainer, x)
    checkpoint = pyro_vae.load(tmp_path / "trainer" / CHECKPOINT)
    assert same_outputs(vae, checkpoint, x)


def test_save_refuses_what_it_could_not_load(tmp_path):
    class Local(nn.Module):                       # made in a function: no name to import it by
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))

    with pytest.raises(ValueError, match="cannot be imported by that name"):
        pyro_vae.save(Local(), tmp_path / "x.pt", init_args={})
    with pytest.raises(ValueError, match="is a folder"):
        pyro_vae.save(small_vae(), tmp_path)
    with pytest.raises(ValueError, match="f is a builtin_function_or_method, which a checkpoint cannot hold"):
        pyro_vae.save(small_vae(), tmp_path / "y.pt", init_args={"data_dim": 64, "latent_dim": 3, "f": print})


# -- resume=True and Python advice -------------------------------------------------------------------------------

def test_a_second_run_gets_python_advice_from_python_and_flags_from_the_cli(tmp_path, digits, capsys):
    config = tiny(tmp_path / "run")
    Trainer(small_vae(), digits, config, progress=False).fit()
    with pytest.raises(FileExistsError) as python:
        Trainer(small_vae(), digits, config, progress=False).fit()            # the README snippet run twice
    assert "resume=True" in str(python.value) and "--resume" not in str(python.value)
    with pytest.raises(FileExistsError, match="resume=True"):
        pyro_vae.train(config, data=digits, progress=False, figures=False)
    with pytest.raises(ValueError, match="when resuming") as changed:
        Trainer(small_vae(), digits, tiny(tmp_path / "run", lr=0.5), progress=False).fit(resume=True)
    assert "--" not in str(changed.value)
    with pytest.raises(FileNotFoundError, match="resume=True, but there is no checkpoint"):
        Trainer(small_vae(), digits, tiny(tmp_path / "none"), progress=False).fit(resume=True)
    # the command line words the same errors with its flags
    flags = ["train", "--hidden", "16", "--latent-dim", "3", "--epochs", "1", "--no-progress", "--no-figures"]
    assert main(flags + ["--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "pass --resume" in err and "resume=True" not in err
    assert main(flags + ["--out", str(tmp_path / "run"), "--resume", "--lr", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "may change on --resume" in err and "when resuming" not in err


def test_fit_resume_continues_the_run_exactly(tmp_path, digits):
    """Trainer.fit(resume=True) is `pyro-vae train --resume`: 1 epoch, then resumed to 2, is the 2-epoch run."""
    pyro.set_rng_seed(0)
    whole = small_vae()
    Trainer(whole, digits, tiny(tmp_path / "whole", epochs=2), progress=False).fit()
    pyro.set_rng_seed(0)
    first = small_vae()
    Trainer(first, digits, tiny(tmp_path / "parts"), progress=False).fit()
    resumed = small_vae()                         # other initial weights: the checkpoint's replace them
    trainer = Trainer(resumed, digits, tiny(tmp_path / "parts", epochs=2), progress=False)
    assert trainer.fit(resume=True) == "completed"
    assert [row["epoch"] for row in trainer.history] == [1, 2]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_with_a_model_declared_in_python_writes_what_the_cli_writes(tmp_path, digits):
    """pyro_vae.train(config, model=...) gives a hand-built VAE the CLI's run folder: summary, test bounds,
    figures; its result is the best model, which load reads back from the folder; resume=True continues it."""
    pyro.set_rng_seed(0)
    vae = VAE(encoder=MLPEncoder(64, latent_dim=2, hidden=(16,)), decoder=MLPDecoder(2, 64, (16,)),
              likelihood=BernoulliLikelihood())
    config = tiny(tmp_path / "run", epochs=2)
    result = pyro_vae.train(config, model=vae, data=digits, progress=False)
    out = tmp_path / "run"
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["epochs_run"] == 2 and summary["test_elbo"] < 0
    for name in ("curves.png", "reconstructions.png", "samples.png", "latent.png", BEST):
        assert (out / name).is_file(), name
    assert all_eval(result.model) and result.model is not vae
    assert same_outputs(result.model, pyro_vae.load(out), digits.test[:10])
    more = pyro_vae.train(tiny(out, epochs=3), model=vae, data=digits, progress=False, figures=False, resume=True)
    assert [row["epoch"] for row in more.history] == [1, 2, 3]
    with pytest.raises(ValueError, match="trains in this process"):
        pyro_vae.train(tiny(tmp_path / "ddp", devices=2), model=vae, data=digits)
