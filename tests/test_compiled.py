"""Compiled steps (pyro_vae.compiled): the replayed recording is the eager step, number for number, for every
objective; training with it is training without it; what cannot be recorded runs eagerly, saying why, or is an
error with compile="on"; one recording per input shape."""
import json
import shutil
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.compiled import CompileError, CompiledStep
from pyro_vae.data import load_dataset
from pyro_vae.examples.conditional import ConditionalVAE
from pyro_vae.examples.two_layer import TwoLayerVAE
from pyro_vae.objectives import build_objective
from pyro_vae.training import TrainConfig, Trainer
from pyro_vae.vae import build_vae

OBJECTIVES = {
    "elbo": dict(name="elbo"),
    "elbo-k3": dict(name="elbo", num_particles=3),
    "meanfield": dict(name="meanfield"),
    "iwae-standard": dict(name="iwae", num_particles=4),
    "iwae-stl": dict(name="iwae", num_particles=4, gradient="stl"),
    "iwae-dreg": dict(name="iwae", num_particles=4, gradient="dreg"),
    "miwae": dict(name="miwae", num_particles=3, num_outer=2),
    "ciwae": dict(name="ciwae", num_particles=4),
    "piwae": dict(name="piwae", num_particles=3, num_outer=2),
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, "dynamic", None, 0)


def eager(objective, vae, params, x, seed):
    torch.manual_seed(seed)
    loss = objective.differentiable_loss(vae.model, vae.guide, x, num_data=1000)
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("key", list(OBJECTIVES))
def test_the_replay_is_the_eager_step_for_every_objective_in_float64(key):
    settings = dict(OBJECTIVES[key])
    objective = build_objective(settings.pop("name"), **settings)
    torch.manual_seed(0)
    vae = build_vae(12, latent_dim=3, hidden=(16,)).double()
    vae.register_params = vae.validate_inputs = False
    params = [p for p in vae.parameters()]
    x = torch.bernoulli(torch.rand(7, 12, dtype=torch.float64))
    eager(objective, vae, params, x, 0)                       # warm the objective's caches, as a first step does
    notes = []
    step = CompiledStep(vae, objective, params, 1000, mode="on", note=notes.append)
    for seed in (1, 2):                                       # the first call records and checks, the second replays
        torch.manual_seed(seed)
        loss, grads = step(x, vae.model, vae.guide)
        after = torch.get_rng_state()
        expected_loss, expected_grads = eager(objective, vae, params, x, seed)
        assert torch.equal(torch.get_rng_state(), after)      # the same random draws, no more, no fewer
        assert loss.dtype == torch.float64 and torch.equal(loss, expected_loss), (key, seed)
        assert all(torch.equal(g, e) for g, e in zip(grads, expected_grads)), key
    assert len(step.recordings) == 1 and next(iter(step.recordings.values())).verified
    assert any("bit for bit" in line for line in notes), notes


def tiny(out, **overrides):
    return TrainConfig(**{**dict(hidden=(32,), latent_dim=2, epochs=2, patience=0, out=str(out)), **overrides})


def train_params(module, data, config):
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    trainer = Trainer(module, data, config, progress=False)
    trainer.fit()
    return trainer, {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("overrides", [dict(), dict(loss="iwae", num_particles=5, gradient="dreg"),
                                       dict(loss="meanfield", warmup_epochs=1.0)], ids=["elbo", "iwae-dreg", "warmup"])
def test_two_epochs_compiled_equal_two_epochs_eager_bit_for_bit(tmp_path, digits, overrides):
    """The measured bound is 0: every parameter is equal after 2 epochs (26 steps), compiled or not."""
    runs = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        vae = build_vae(digits.data_dim, latent_dim=2, hidden=(32,))
        runs[mode] = train_params(vae, digits, tiny(tmp_path / mode, compile=mode, **overrides))
    (eager_trainer, eager_state), (compiled_trainer, compiled_state) = runs["off"], runs["on"]
    assert all(torch.equal(eager_state[k], compiled_state[k]) for k in eager_state)
    assert [r["train_loss"] for r in eager_trainer.history] == [r["train_loss"] for r in compiled_trainer.history]
    # one recording per batch shape: 12 full batches of 100 and the last of 57 (1257 training digits)
    labels = sorted(r.label for r in compiled_trainer.compiled.recordings.values())
    assert labels == ["x [100, 64]", "x [57, 64]"]
    # recorded in the epoch that first meets each shape (warm-up's steps, with beta < 1, are eager)
    seconds = [r["compile_seconds"] for r in compiled_trainer.history]
    assert seconds[0] > 0 and (seconds[1] > 0 if "warmup_epochs" in overrides else seconds[1] == 0)
    assert eager_trainer.compiled.disabled == "compile is off"


class DataDependentVAE(nn.Module):
    """A model on the contract whose guide branches on the data in Python: it cannot be recorded."""

    def __init__(self, data_dim=64, latent_dim=2):
        super().__init__()
        self.encoder = nn.Linear(data_dim, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, data_dim)
        self.latent_dim = latent_dim

    def model(self, x, num_data=None):
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        loc, log_scale = self.encoder(x).chunk(2, -1)
        if x.mean() > 0.5:                                  # Python control flow on data
            loc = loc + 1.0
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


class DiscreteLatent(DataDependentVAE):
    """A Bernoulli latent: no reparameterized samples, so no recorded gradient."""

    def model(self, x, num_data=None):
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(x.shape[0], self.latent_dim)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)[:, :self.latent_dim]).to_event(1))


@pytest.mark.parametrize("module, reason", [(DataDependentVAE, "reads a tensor's value in Python"),
                                            (DiscreteLatent, "no reparameterized samples")],
                         ids=["python-control-flow", "discrete-latent"])
def test_what_cannot_be_recorded_runs_eagerly_saying_why_or_is_an_error_with_on(tmp_path, digits, module, reason,
                                                                               capsys):
    torch.manual_seed(0)
    auto, _ = train_params(module(), digits, tiny(tmp_path / "auto", epochs=1))
    assert reason in auto.compiled.disabled and len(auto.history) == 1
    assert f"compile: the step runs eagerly ({auto.compiled.disabled})" in capsys.readouterr().err   # one line: why
    torch.manual_seed(0)
    eager, _ = train_params(module(), digits, tiny(tmp_path / "off", epochs=1, compile="off"))
    assert auto.history[0]["train_loss"] == eager.history[0]["train_loss"]   # the fallback changes no number
    with pytest.raises(CompileError, match=reason):
        train_params(module(), digits, tiny(tmp_path / "on", epochs=1, compile="on"))


@pytest.mark.parametrize("example", ["two-layer", "conditional"])
def test_the_examples_compile_and_train_as_they_do_eagerly(tmp_path, digits, example):
    states = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        module = (TwoLayerVAE(digits.data_dim, latent_dim=2, hidden=(32,), latent1_dim=4, hidden2=(8,))
                  if example == "two-layer" else ConditionalVAE(digits.data_dim, 10, latent_dim=2, hidden=(32,)))
        trainer, states[mode] = train_params(module, digits, tiny(tmp_path / mode, epochs=1, compile=mode,
                                                                  loss="iwae", num_particles=3))
        assert trainer.compiled.disabled is None or mode == "off"
    assert all(torch.equal(states["off"][k], states["on"][k]) for k in states["off"])


def test_the_compile_time_is_in_the_metrics_log(tmp_path, digits):
    from pyro_vae.launch import train
    config = tiny(tmp_path / "run", epochs=2)
    train(config, progress=False, data=digits, figures=False)
    rows = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["compile_seconds"] > 0 and rows[1]["compile_seconds"] == 0


@pytest.mark.parametrize("example", ["vae", "conditional"])
def test_log_likelihood_compiled_is_log_likelihood_eager(digits, example):
    """The evaluators' log weights, recorded per (batch, chunk) shape, give the same estimates to the bit."""
    from pyro_vae.evaluation import evaluate
    torch.manual_seed(0)
    module = (build_vae(digits.data_dim, latent_dim=2, hidden=(32,)) if example == "vae"
              else ConditionalVAE(digits.data_dim, 10, latent_dim=2, hidden=(32,)))
    x, extra = digits.test[:50], ({} if example == "vae" else {"y": digits.test_labels[:50]})
    results = {}
    for mode in ("off", "on"):
        torch.manual_seed(1)
        results[mode] = evaluate(module.model, module.guide, x, num_samples=60, particle_chunk=25, batch_size=20,
                                 compile=mode, **extra)
    assert torch.equal(results["off"].log_likelihood, results["on"].log_likelihood)
    assert results["off"].iwae_curve == results["on"].iwae_curve


def test_ais_compiled_is_ais_eager(digits):
    """The AIS gradient, recorded once per batch from its 20th evaluation on, gives the same chains to the bit."""
    from pyro_vae.ais import ais_log_likelihood
    torch.manual_seed(0)
    vae = build_vae(digits.data_dim, latent_dim=2, hidden=(16,))
    runs = {}
    for mode in ("off", "on"):
        torch.manual_seed(3)
        runs[mode] = ais_log_likelihood(vae.model, vae.guide, digits.test[:6], num_chains=4, num_steps=12,
                                        leapfrog_steps=3, compile=mode)
    assert torch.equal(runs["off"].log_weights, runs["on"].log_weights)
    assert torch.equal(runs["off"].step_size, runs["on"].step_size)


def test_a_recording_is_per_train_or_eval_mode(digits):
    """Dropout is recorded as the mode had it: switching the module to eval mode records the step again."""
    torch.manual_seed(0)
    vae = build_vae(digits.data_dim, latent_dim=2, hidden=(16,))
    vae.encoder.net.insert(1, nn.Dropout(0.5))
    vae.register_params = vae.validate_inputs = False
    objective = build_objective("elbo")
    params = list(vae.parameters())
    x = digits.test[:20]
    eager(objective, vae, params, x, 0)
    step = CompiledStep(vae, objective, params, 1000, mode="on")
    results = {}
    for training in (True, False, True):
        vae.train(training)
        torch.manual_seed(5)
        loss, grads = step(x, vae.model, vae.guide)
        expected_loss, _ = eager(objective, vae, params, x, 5)
        assert torch.equal(loss, expected_loss), training
        results.setdefault(training, loss)
    assert len(step.recordings) == 2 and not torch.equal(results[True], results[False])


def test_what_a_recording_bakes_in_is_in_its_key(digits):
    """Review findings: freezing a parameter, changing the objective's settings or replacing a buffer records the
    step again (each case then equals its eager step); a NaN the eager step does not have is never 'bit for bit'."""
    from pyro_vae.compiled import _max_relative_error
    torch.manual_seed(0)
    vae = build_vae(digits.data_dim, latent_dim=2, hidden=(16,), likelihood="gaussian")
    vae.register_params = vae.validate_inputs = False
    objective = build_objective("iwae", num_particles=3)
    params = list(vae.parameters())
    x = digits.test[:20]
    eager(objective, vae, params, x, 0)
    step = CompiledStep(vae, objective, params, 1000, mode="auto")
    step(x, vae.model, vae.guide)
    objective.gradient = "dreg"                                        # another estimator, same shapes
    torch.manual_seed(2)
    _, grads = step(x, vae.model, vae.guide)
    _, expected = eager(objective, vae, params, x, 2)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected)) and len(step.recordings) == 2
    assert _max_relative_error([torch.tensor([2.0, float("nan")])], [torch.tensor([2.0, 1.0])]) == float("inf")
    assert _max_relative_error([torch.tensor([2.0, 1.0])], [torch.tensor([2.0, 1.0 + 2 ** -20])]) > 0


class _FakeCUDAGraph:
    """CUDA-graph semantics on the CPU: every replay writes its outputs into the same tensors."""

    def __init__(self, fn, args, outputs):
        self.fn, self.args, self.outputs = fn, args, outputs

    def replay(self):
        with torch.no_grad():
            for out, new in zip(self.outputs, self.fn(*self.args)):
                out.copy_(new)


@pytest.mark.parametrize("what", ["ais", "training"])
def test_the_cuda_graph_path_keeps_every_number_on_a_stand_in_graph(digits, monkeypatch, tmp_path, what):
    """Review finding 1: a CUDA graph's outputs are overwritten by its next replay; AIS keeps the previous
    evaluation's tensors, so it must get copies (the trainer may take the static ones).  The graph path is
    exercised here with a CPU stand-in of the same semantics."""
    import torch.utils._pytree as pytree
    from pyro_vae import compiled
    original = compiled.Recorder._check

    def check_then_capture(self, recording, args, flat):
        out = original(self, recording, args, flat)
        if recording.verified:
            static = [t if isinstance(t, nn.Parameter) else t.clone() for t in flat]
            static_args = pytree.tree_unflatten(static, pytree.tree_structure(args))
            with torch.no_grad(), torch.random.fork_rng():
                outputs = tuple(o.clone() for o in recording.graph(*static_args))
            recording.cuda_graph = (_FakeCUDAGraph(recording.graph, static_args, outputs), static, outputs,
                                    [t.data_ptr() for t in static])
        return out
    results = {}
    for mode in ("off", "on"):
        monkeypatch.setattr(compiled.Recorder, "_check", check_then_capture)
        torch.manual_seed(0)
        vae = build_vae(digits.data_dim, latent_dim=2, hidden=(16,))
        torch.manual_seed(3)
        if what == "ais":
            from pyro_vae.ais import ais_log_likelihood
            results[mode] = ais_log_likelihood(vae.model, vae.guide, digits.test[:6], num_chains=4, num_steps=30,
                                               step_size=1.0, adapt_step_size=False, leapfrog_steps=3,
                                               compile=mode).log_weights
        else:
            _, state = train_params(vae, digits, tiny(tmp_path / mode, compile=mode, clip_norm=1.0))
            results[mode] = torch.cat([v.flatten() for v in state.values()])
    assert torch.equal(results["off"], results["on"])


needs_cxx = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                               reason="compile='fused' needs a C++ compiler (inductor's CPU kernels)")


def _fused_and_eager(digits, capsys):
    from pyro_vae.evaluation import evaluate
    torch.manual_seed(0)
    vae = build_vae(digits.data_dim, latent_dim=2, hidden=(32,)).double()
    x = digits.test[:60].double()                       # 3 batches x 2 chunks of one shape: recorded, then replayed
    results = {}
    for mode in ("off", "fused"):
        torch.manual_seed(1)
        results[mode] = evaluate(vae.model, vae.guide, x, num_samples=60, particle_chunk=30, batch_size=20,
                                 compile=mode, progress=True)
    return results, capsys.readouterr()


@needs_cxx
def test_log_likelihood_fused_is_log_likelihood_eager_to_float_rounding(digits, capsys):
    """compile='fused' (inductor's kernels on the recording) draws the eager samples and gives the eager estimates
    to within float64 rounding: not bit for bit, but nowhere near a Monte-Carlo difference."""
    results, printed = _fused_and_eager(digits, capsys)
    text = printed.out + printed.err
    assert "(fused kernels, relative error" in text and "no fused kernels" not in text and "plain" not in text
    off, fused = results["off"].log_likelihood, results["fused"].log_likelihood
    assert off.shape == fused.shape == (60,)
    torch.testing.assert_close(fused, off, rtol=1e-12, atol=0)
    assert results["off"].iwae_curve.keys() == results["fused"].iwae_curve.keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fused_log1p_is_log1p_to_two_ulps(dtype):
    """The fused kernels' log1p (through log, which inductor vectorizes) against torch.log1p, computed in float64
    (from float64 inputs: in float128 terms, the float64 reference is itself within an ulp): tiny, negative,
    large arguments and the special values."""
    from pyro_vae.compiled import _log1p
    u = torch.logspace(-40, 38, 4000, dtype=torch.float64)
    u = torch.cat([u, -u[u < 1], torch.tensor([0.0, -1.0, -0.5, 1e-30])]).to(dtype)
    reference = torch.log1p(u.double())
    finite = (reference != 0) & reference.isfinite()        # -inf where float32 rounds -(1 - 1e-9) to -1
    error = ((_log1p(u).double() - reference).abs() / reference.abs().clamp_min(1e-300))[finite]
    assert torch.equal(_log1p(u)[~finite], torch.log1p(u)[~finite])
    assert error.max() <= 2 * torch.finfo(dtype).eps
    special = _log1p(torch.tensor([0.0, -1.0, float("inf"), float("nan")], dtype=dtype))
    assert special[0] == 0 and special[1] == -float("inf") and special[2] == float("inf") and special[3].isnan()


@needs_cxx
def test_the_fused_backend_computes_a_log_sigmoid_without_log1p():
    """Inductor's log-sigmoid decomposes into log1p(exp(-|l|)); the fused backend routes the log1p through
    _log1p: the same values (float32 rounding of a 64-term sum), and no log1p left in the generated kernels."""
    from torch._inductor.utils import run_and_get_code
    from pyro_vae.compiled import _inductor_with_vector_log1p
    def f(logits):
        return torch.nn.functional.logsigmoid(logits).sum(-1)
    logits = torch.randn(8, 64) * 20
    fused = torch.compile(f, backend=_inductor_with_vector_log1p(), fullgraph=True, dynamic=False)
    torch._dynamo.reset()
    value, code = run_and_get_code(fused, logits)
    torch.testing.assert_close(value, f(logits), rtol=1e-6, atol=1e-5)
    source = "\n".join(code)
    assert "log1p" not in source and ".log()" in source


def test_fused_falls_back_to_the_plain_recording_where_inductor_fails(digits, capsys, monkeypatch):
    """No C++ compiler (inductor fails in its first call, after drawing): one note, and the plain recording's
    numbers, bit for bit (the failed call's draws undone)."""
    def broken(*args, **kwargs):
        def fails(*inputs):
            torch.randn(7)
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return fails
    monkeypatch.setattr(torch, "compile", broken)
    results, printed = _fused_and_eager(digits, capsys)
    text = printed.out + printed.err
    assert "no fused kernels for the log weights (RuntimeError: InvalidCxxCompiler" in text
    assert "replaying the plain recording" in text and "bit for bit" in text
    assert torch.equal(results["off"].log_likelihood, results["fused"].log_likelihood)


def test_an_unknown_evaluation_compile_mode_is_refused(digits):
    from pyro_vae.evaluation import log_likelihood
    vae = build_vae(digits.data_dim, latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="compile must be one of .*'fused'.*got 'inductor'"):
        log_likelihood(vae.model, vae.guide, digits.test[:4], num_samples=4, compile="inductor")


@needs_cxx
def test_a_fused_recording_off_the_eager_numbers_is_replaced_by_the_plain_one(digits, capsys, monkeypatch):
    """With no tolerance at all, the fused kernels' float64 rounding fails the first replay's check: the plain
    recording takes over (checked in turn), and the estimates are the eager ones to the bit."""
    import pyro_vae.compiled
    monkeypatch.setattr(pyro_vae.compiled, "FUSED_ULPS", 0)
    results, printed = _fused_and_eager(digits, capsys)
    text = printed.out + printed.err
    assert "differ from the eager computation (relative error" in text and "replaying the plain recording" in text
    assert torch.equal(results["off"].log_likelihood, results["fused"].log_likelihood)


@pytest.mark.parametrize("where", ["check", "later"])
def test_fused_kernels_that_fail_in_a_replay_hand_over_to_the_plain_recording(digits, capsys, monkeypatch, where):
    """A fused replay that raises (after drawing) at its first check or any later call: that call is computed
    eagerly from the random state before it, the plain recording takes over, and every number is the eager one."""
    calls = {"n": 0}

    def flaky(graph, **kwargs):
        def run(*inputs):
            calls["n"] += 1
            if calls["n"] == (2 if where == "check" else 4):      # 1: _fuse's compiling call, 2: the check
                torch.randn(11)
                raise RuntimeError("a kernel failed")
            return graph(*inputs)
        return run
    monkeypatch.setattr(torch, "compile", flaky)
    results, printed = _fused_and_eager(digits, capsys)
    text = printed.out + printed.err
    assert "compile: the fused kernels of the log weights for x [20, 64] failed (RuntimeError: a kernel failed)" in text
    assert torch.equal(results["off"].log_likelihood, results["fused"].log_likelihood)


def test_a_training_step_is_not_fused(digits):
    vae = build_vae(digits.data_dim, latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="compile must be one of \\('auto', 'on', 'off'\\), got 'fused'"):
        CompiledStep(vae, build_objective("elbo"), list(vae.parameters()), 100, mode="fused")
