"""Device and dtype handling: every tensor the objectives and evaluators create follows the model's device
and dtype.  On CPU this is checked in float64 (a float32 tensor created anywhere would either raise or
downcast the result); the CUDA tests run where a GPU is present."""
import pyro
import pytest
import torch

from pyro_vae import build_objective, build_vae, evaluate, log_weights
from pyro_vae.data import load_dataset
from pyro_vae.examples.conditional import ConditionalVAE
from pyro_vae.examples.two_layer import TwoLayerVAE
from pyro_vae.devices import resolve_device
from pyro_vae.launch import train
from pyro_vae.training import TrainConfig

OBJECTIVES = [("elbo", "standard"), ("meanfield", "standard"), ("iwae", "standard"), ("iwae", "stl"),
              ("iwae", "dreg"), ("miwae", "dreg"), ("ciwae", "standard"), ("piwae", "standard")]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def binary(n, d, device="cpu", dtype=torch.float64):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(0)) < 0.4).to(device=device, dtype=dtype)


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("prior", ["standard", "mog", "vamp"])
@pytest.mark.parametrize("loss, gradient", OBJECTIVES)
def test_objectives_follow_the_model_dtype_and_device(loss, gradient, prior, device):
    pyro.set_rng_seed(0)
    vae = build_vae(12, latent_dim=3, hidden=(8,), prior=prior, prior_components=4).to(device=device,
                                                                                       dtype=torch.float64)
    x = binary(6, 12, device)
    objective = build_objective(loss, num_particles=3, gradient=gradient, num_outer=1 if loss != "miwae" else 2)
    value = objective.differentiable_loss(vae.model, vae.guide, x, num_data=60)
    assert value.dtype == torch.float64 and value.device.type == device
    value.backward()
    grads = [p.grad for p in vae.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float64 and g.device.type == device for g in grads)


@pytest.mark.parametrize("device", devices())
def test_evaluators_follow_the_model_dtype_and_device(device):
    pyro.set_rng_seed(0)
    for module, kwargs in [(TwoLayerVAE(12, latent_dim=2, hidden=(8,), latent1_dim=3, hidden2=(4,)), {}),
                           (ConditionalVAE(12, num_classes=3, latent_dim=2, hidden=(8,)),
                            {"y": torch.tensor([0, 1, 2, 0, 1], device=device)})]:
        module = module.to(device=device, dtype=torch.float64)
        x = binary(5, 12, device)
        lw = log_weights(module.model, module.guide, x, num_particles=4, **kwargs)
        assert lw.shape == (4, 5) and lw.dtype == torch.float64 and lw.device.type == device
        summary = evaluate(module.model, module.guide, x, num_samples=20, particle_chunk=7, batch_size=2, **kwargs)
        assert summary.log_likelihood.dtype == torch.float64 and summary.log_likelihood.device.type == device


def test_device_auto_and_unavailable_cuda():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available; use the CPU") as info:
            resolve_device("cuda")
        assert "device='cpu'" in str(info.value) and "--device cpu" in str(info.value)   # Python's and the CLI's


@CUDA
@pytest.mark.parametrize("model", [None, "pyro_vae.examples.conditional:ConditionalVAE"])
def test_training_on_cuda_matches_the_cpu_run_closely(tmp_path, model):
    """Two epochs on digits with --device cuda: runs, checkpoints resume, and the validation ELBO is
    close to the CPU run's (different kernels, so not bit-identical)."""
    results = {}
    for device in ("cpu", "cuda"):
        config = TrainConfig(epochs=2, out=str(tmp_path / device), device=device, model=model, patience=0)
        results[device] = train(config, progress=False, figures=False)
        params = list(results[device].model.parameters())
        assert params[0].device.type == device
    cpu, cuda = (results[d].history[-1]["val_elbo"] for d in ("cpu", "cuda"))
    assert abs(cpu - cuda) < 1.0, (cpu, cuda)
    resumed = train(TrainConfig(epochs=3, out=str(tmp_path / "cuda"), device="cuda", model=model, patience=0),
                    resume=True, progress=False, figures=False)
    assert len(resumed.history) == 3


def test_evaluate_command_runs_on_the_chosen_device(tmp_path, capsys):
    from pyro_vae.cli import main
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "16", "--no-progress", "--no-figures", "--out", str(out)]) == 0
    for device in devices() + ["auto"]:
        assert main(["evaluate", str(out), "--num", "20", "--num-samples", "10", "--no-progress",
                     "--device", device, "--out", str(tmp_path / device)]) == 0
        assert "log p(x) =" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--num", "5", "--device", "tpu"]) == 1
    assert "device" in capsys.readouterr().err
