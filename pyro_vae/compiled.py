"""Compiled training steps: Pyro's semantics without Pyro's per-step Python.

For a fixed input signature (shapes, dtypes, device) a training step of a model/guide pair is a fixed sequence of
tensor operations; Pyro's Python (two traces, the replay, plates, broadcasting) only decides which ones.  So the
step is run once per signature under ``torch.fx.experimental.proxy_tensor.make_fx``, which records the aten
operations it performs, forward and backward (``torch.autograd.grad``), random draws included::

    recording(params, x, *side_inputs) -> (loss, grad_1, ..., grad_P)        x: [B, D]; grad_i: params[i].shape

and later steps of that signature replay the recording under ``no_grad``: no trace, no autograd graph.  The replay
draws its noise from the global generator, in the order the eager step draws it, so on the CPU a compiled run is
the eager run, bit for bit.  That is checked, not assumed: the first replay of every recording runs beside the
eager step from the same random state, and must use the same draws and give the same loss and gradients (to
within ``rtol``), or the signature falls back to the eager step.

What cannot be recorded runs eagerly, with one line saying why (``mode="auto"``), or is an error
(``mode="on"``): data-dependent Python control flow in a program (``if x.sum() > 0``, ``.item()``), a latent site
without reparameterized samples (discrete latents), ``pyro.param``s outside the module, an objective with no
recordable loss, a step that changes the module's buffers (batch-norm statistics).  ``Trace_ELBO`` and
``TraceMeanField_ELBO`` call ``.item()`` inside their loss: their recordable twins (:mod:`pyro_vae.elbo_twins`)
compute the same value (the float64 sum of the per-site terms, as Pyro's does) and the same surrogate, so they
keep their estimators.

``mode="fused"`` (the evaluators': :func:`pyro_vae.evaluation.log_likelihood` and friends) hands each CPU recording
to inductor (``torch.compile``), which writes C++ kernels that fuse what follows each matrix product (the bias, the
Bernoulli log-sigmoid, the pixel sum) into one vectorized pass, its ``log1p`` taken through ``log``
(:func:`_log1p`: inductor's own is a scalar loop): the log weights of an MLP decoder cost about half
(``benchmarks/log_likelihood.py``: 0.49x plain PyTorch at 784-400-20, 1.66x the decoder's matrix products
alone).  The random draws stay ATen's (inductor's ``fallback_random``), so they are the eager ones; the values
are not bit for bit, only to within float rounding (the first replay's check allows 128 ulps relative, ~1e-5 in
float32, never more than 1e-4).  It needs a C++ compiler and tens of seconds per shape; where inductor fails, the
plain recording is replayed, with a note.  On CUDA the plain recording's CUDA graph is used instead.

Caveat, as for every trace-based compiler: Python-side state a program reads (a counter, Python's ``random``)
is frozen into the recording; programs on the contract of :mod:`pyro_vae.contract` read none.
"""
import contextlib
import functools
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.utils._pytree as pytree
import pyro
from pyro.infer import ELBO

from .elbo_twins import CompileError, recordable_loss

MODES = ("auto", "on", "off")                   # the training step's
EVAL_MODES = MODES + ("fused",)                 # the evaluators': "fused" also compiles each recording with inductor
FUSED_ULPS = 128                                # how far (relative, in units of eps) a fused replay may be from eager
FUSED_RTOL_CAP = 1e-4                           # and never further (half precision falls back to the plain recording)


# -- recording and replaying -----------------------------------------------------------------------------------

@contextlib.contextmanager
def swapped_parameters(module: torch.nn.Module, values: Dict[str, torch.Tensor]):
    """The module computes with ``values`` (by parameter name) in place of its parameters while inside."""
    with torch.nn.utils.stateless._reparametrize_module(module, values):
        yield


def _rng_state(device: torch.device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def _quiet(logger: str):
    """``logger``'s warnings off inside (inductor's C++ build says that it found no CUDA runtime, on the CPU)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _log1p(u: torch.Tensor) -> torch.Tensor:
    """``log1p(u)`` through ``log``, vectorized by inductor (its CPU ``log1p`` is a scalar loop, 7x slower: it was
    most of a fused Bernoulli log-likelihood).  Goldberg's form ``log(1 + u) * u / ((1 + u) - 1)`` cancels the
    rounding of ``1 + u``: within 2 ulps of ``log1p`` (measured 1.5e-7 relative in float32 over [-1, 3e38]); exact
    at ``u = 0``, ``-1`` and ``inf``."""
    w = 1 + u
    return torch.where(w == 1, u, torch.where(torch.isinf(w), w, torch.log(w) * (u / (w - 1))))


@functools.lru_cache(maxsize=None)
def _inductor_with_vector_log1p():
    """Inductor (draws ATen's: ``fallback_random``) with :func:`_log1p` for ``aten.log1p``, which its own
    decompositions of the log-sigmoid, softplus and binary cross-entropy produce; built once, on the first fused
    recording (importing inductor is not free)."""
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.custom_graph_pass import CustomGraphPass
    from torch._inductor.decomposition import select_decomp_table

    class CacheKey(CustomGraphPass):
        """A no-op pass whose uuid enters inductor's cache keys, which leave the decompositions out: without it a
        warm cache serves another backend's kernels for the same graph (measured: log1p's scalar loop)."""
        def __call__(self, graph: torch.fx.Graph) -> None:
            pass

        def uuid(self) -> str:
            return "pyro_vae.compiled._log1p, version 1"

    decompositions = {**select_decomp_table(), torch.ops.aten.log1p.default: _log1p}

    def backend(graph, example_inputs):
        with config.patch(fallback_random=True, post_grad_custom_post_pass=CacheKey()):
            return compile_fx(graph, example_inputs, decompositions=decompositions)
    return backend


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    text = text[0] if text else type(error).__name__
    if "_local_scalar_dense" in text or "data-dependent" in text:
        return "a program reads a tensor's value in Python (.item(), or an if/while on data)"
    return f"{type(error).__name__}: {text[:200]}"


def _max_relative_error(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """The largest ``|u - v| / max(|v|, tiny)`` over all elements (0 where both are equal, infinities and NaNs
    included); infinite where the shapes, dtypes or the positions of NaNs differ."""
    worst = 0.0
    for u, v in zip(a, b):
        u, v = u.detach(), v.detach()
        if u.shape != v.shape or u.dtype != v.dtype or not torch.equal(u.isnan(), v.isnan()):
            return math.inf
        same = (u == v) | (u.isnan() & v.isnan())
        if bool(same.all()):
            continue
        tiny = torch.finfo(v.dtype).tiny if v.is_floating_point() else 1
        error = ((u - v).abs() / v.abs().clamp_min(tiny)).masked_fill(same, 0)
        worst = max(worst, float(error.max()) if not bool(error.isnan().any()) else math.inf)
    return worst


def prune(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop recorded operations whose results nothing uses, except random draws (dropping one would shift every
    later draw) and in-place operations."""
    for node in reversed(list(graph.graph.nodes)):
        op = node.target
        if (node.op == "call_function" and not node.users and isinstance(op, torch._ops.OpOverload)
                and not op._schema.is_mutable and torch.Tag.nondeterministic_seeded not in op.tags):
            graph.graph.erase_node(node)
    graph.recompile()
    return graph


def direct_calls(graph: torch.fx.GraphModule) -> Callable:
    """The graph's generated Python with every aten operation called directly, not through
    ``OpOverload.__call__``'s Python frame and four attribute lookups per call (6 % of a small step's replay):
    the same operations in the same order."""
    aliases, names = {}, {}

    def alias(match):
        op = (match.group(1), match.group(2))
        if op not in names:                      # one name per (operation, overload): _aten0, _aten1, ...
            names[op] = f"_aten{len(names)}"
            aliases[names[op]] = getattr(getattr(torch.ops.aten, op[0]), op[1])._op
        return names[op] + "("
    source = re.sub(r"torch\.ops\.aten\.(\w+)\.(\w+)\(", alias, graph.code)
    namespace = dict(graph.forward.__globals__, **aliases)
    exec(compile(source, f"<recorded step {id(graph):x}>", "exec"), namespace)   # noqa: S102 - our own graph's code
    return functools.partial(namespace["forward"], graph)


@dataclass
class Recording:
    """One signature's recorded function, or why it runs eagerly (``graph`` None)."""
    graph: Optional[Callable]
    label: str = ""                      # what it was recorded for, e.g. "x [100, 64]"
    why_not: Optional[str] = None
    verified: bool = False
    seconds: float = 0.0                 # spent recording and checking it
    plain: Optional[Callable] = None     # with mode "fused": the plain recording, replayed where the fused one fails
    cuda_graph: Any = None               # on CUDA: (CUDAGraph, static inputs, static outputs, input pointers)


class Recorder:
    """A function of tensors, recorded once per input signature and replayed.

    Args:
        traced: ``traced(*args) -> tuple of tensors``, what is recorded (``args``: tensors and lists of tensors).
        eager: the same function as the library computes it eagerly (the reference of the first replay's check;
            it may differ from ``traced`` only in how it computes the same numbers, e.g. ``.item()``).
        mode: ``"auto"`` (fall back to eager with a note), ``"on"`` (a :class:`CompileError` instead), ``"off"``,
            or ``"fused"`` (as ``"auto"``, each CPU recording compiled by inductor: see the module's docstring).
        note: called with one line whenever a recording starts, is checked, or falls back.
        rtol: how far the first replay may be from the eager result on a GPU (on the CPU it must be equal: the
            same kernels in the same order give the same bits).
        what: what the function computes, for the notes ("the step", "the log weights"); argname: the name of
            its first tensor argument, whose shape the notes give ("x").
        after: calls of a signature computed eagerly before it is recorded (recording costs about a second: it
            pays where a signature repeats).

    ``recorder(key, *args)`` returns the outputs, or None where the caller must compute them eagerly; ``key``
    holds what the recording depends on besides the tensors' shapes (the programs, ...).  On CUDA a checked
    recording is captured in a CUDA graph (static input buffers; the random draws advance the generator's
    graph-safe state at every replay), so a step launches no kernel from Python.
    """

    def __init__(self, traced: Callable, eager: Callable, mode: str = "auto",
                 note: Callable[[str], None] = lambda line: None, rtol: float = 1e-5, what: str = "the step",
                 argname: str = "x", after: int = 0):
        if mode not in EVAL_MODES:
            raise ValueError(f"compile must be one of {EVAL_MODES}, got {mode!r}")
        self.traced, self.eager, self.mode, self.note, self.rtol, self.what = traced, eager, mode, note, rtol, what
        self.argname, self.after = argname, after
        # CUDA graphs write their outputs into the same tensors at every replay: only a caller that is done with
        # them before its next call may take them as they are; everyone else gets copies
        self.static_outputs = False
        self.seen: Dict[tuple, int] = {}         # eager calls per signature before it is recorded
        self.recordings: Dict[tuple, Recording] = {}
        self.disabled: Optional[str] = None if mode != "off" else "compile is off"
        self.buffers: Callable[[], Sequence[torch.Tensor]] = tuple   # tensors a call must leave as they were
        self._taken = 0.0

    @property
    def seconds(self) -> float:
        """Time spent recording and checking, over all signatures."""
        return sum((r.seconds for r in self.recordings.values()), 0.0)

    def take_seconds(self) -> float:
        """Time spent recording and checking since the last call (what an epoch's metrics row reports)."""
        total = self.seconds
        taken, self._taken = total - self._taken, total
        return taken

    def refuse(self, why: str) -> None:
        """Compute eagerly from now on, for ``why`` (an error with ``mode="on"``)."""
        if self.mode == "on":
            raise CompileError(f"cannot compile {self.what}: {why} (compile='auto' runs it eagerly)")
        if self.disabled is None:
            self.note(f"compile: {self.what} runs eagerly ({why})")
        self.disabled = why

    def __call__(self, key: tuple, *args) -> Optional[Tuple[torch.Tensor, ...]]:
        if self.disabled is not None:
            return None
        flat = pytree.tree_leaves(args)
        signature = key + tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in flat)
        recording = self.recordings.get(signature)
        if recording is None:
            if self.seen.get(signature, 0) < self.after:      # not worth recording (yet): the shape must repeat
                self.seen[signature] = self.seen.get(signature, 0) + 1
                return None
            recording = self.recordings[signature] = self._record(args, flat)
        if recording.graph is None:
            return None
        device = flat[-1].device
        state = _rng_state(device)          # where a replay fails, the eager computation starts from here
        try:
            if not recording.verified:
                return self._check(recording, args, flat)
            if recording.cuda_graph is not None and self._replay_graph(recording, flat):
                return recording.cuda_graph[2] if self.static_outputs else tuple(
                    t.clone() for t in recording.cuda_graph[2])
            with torch.no_grad():
                return tuple(recording.graph(*args))
        except CompileError:
            raise
        except Exception as error:  # noqa: BLE001 - a replay that fails (an input layout it did not expect): eager
            _set_rng_state(state, device)
            if recording.plain is not None:        # the fused kernels failed: this call eager, then the plain one
                self.note(f"compile: the fused kernels of {self.what} for {recording.label} failed ({_first_line(error)}); "
                          f"replaying the plain recording")
                recording.graph, recording.plain, recording.verified = recording.plain, None, False
                return None
            self.refuse(f"a replay failed ({_first_line(error)})")
            return None

    @staticmethod
    def _replay_graph(recording: Recording, flat) -> bool:
        """Replay the CUDA graph on ``flat``'s values (copied into its static inputs); False, and the graph dropped,
        where a parameter no longer lives where the graph reads it (``p.data = ...``)."""
        graph, inputs, outputs, pointers = recording.cuda_graph
        for buffer, value, pointer in zip(inputs, flat, pointers):
            if buffer is value:
                if value.data_ptr() != pointer:
                    recording.cuda_graph = None
                    return False
            elif buffer.data_ptr() != value.data_ptr():
                buffer.copy_(value)
        graph.replay()
        return True

    def _record(self, args, flat) -> Recording:
        from torch.fx.experimental.proxy_tensor import make_fx
        start = time.perf_counter()
        device = flat[-1].device
        self.note(f"compiling {self.what} for {_label(args, self.argname)}")
        saved = [(b, b.detach().clone()) for b in self.buffers()]
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                    pyro.validation_enabled(False):
                recorded = prune(make_fx(self.traced)(*args))
            graph = direct_calls(recorded)
            if any(not torch.equal(b, before) for b, before in saved):
                raise CompileError("a step changes the module's buffers (batch-norm statistics)")
        except Exception as error:  # noqa: BLE001 - whatever stops the recording, the eager path still works
            why = str(error) if isinstance(error, CompileError) else _first_line(error)
            self.refuse(why)
            return Recording(None, _label(args, self.argname), why, seconds=time.perf_counter() - start)
        finally:
            with torch.no_grad():
                for b, before in saved:
                    b.copy_(before)
        recording = Recording(graph, _label(args, self.argname), seconds=time.perf_counter() - start)
        if self.mode == "fused" and device.type == "cpu":
            self._fuse(recording, recorded, args, device)
        return recording

    def _fuse(self, recording: Recording, recorded: torch.fx.GraphModule, args, device: torch.device) -> None:
        """Compile the recording with inductor, and keep the plain one to fall back on.  The compiling is done
        here (a first call, its draws undone), so that a failure (no C++ compiler) costs nothing but a note."""
        start = time.perf_counter()
        try:
            fused = torch.compile(recorded, backend=_inductor_with_vector_log1p(), dynamic=False, fullgraph=True)
            with torch.random.fork_rng(devices=[]), torch.no_grad(), _quiet("torch.utils.cpp_extension"):
                fused(*args)
            recording.graph, recording.plain = fused, recording.graph
        except Exception as error:  # noqa: BLE001 - the plain recording still works
            self.note(f"compile: no fused kernels for {self.what} ({_first_line(error)}); replaying the plain "
                      f"recording")
        recording.seconds += time.perf_counter() - start

    def _check(self, recording: Recording, args, flat):
        """The first replay of a recording, beside the eager function from the same random state."""
        start = time.perf_counter()
        device = flat[-1].device
        before = _rng_state(device)
        expected = tuple(self.eager(*args))
        after_eager = _rng_state(device)
        _set_rng_state(before, device)
        with torch.no_grad():
            replayed = tuple(recording.graph(*args))
        same_draws = all(a is None or torch.equal(a, b) for a, b in zip(after_eager, _rng_state(device)))
        error = _max_relative_error(replayed, expected)
        recording.seconds += time.perf_counter() - start
        rtol = self.rtol if device.type == "cuda" else 0.0     # the same kernels on the CPU: bit for bit
        if recording.plain is not None:                       # inductor's kernels: float rounding apart
            eps = max((torch.finfo(t.dtype).eps for t in expected if t.is_floating_point()), default=0.0)
            rtol = max(rtol, min(FUSED_ULPS * eps, FUSED_RTOL_CAP))
        if recording.plain is not None and (not same_draws or not error <= rtol):
            _set_rng_state(after_eager, device)
            self.note(f"compile: the fused kernels of {self.what} for {recording.label} differ from the eager computation "
                      f"({'other random draws' if not same_draws else f'relative error {error:.1e}'}); replaying "
                      f"the plain recording")
            recording.graph, recording.plain = recording.plain, None
            return expected
        if not same_draws or not error <= rtol:
            _set_rng_state(after_eager, device)
            recording.graph = None
            recording.why_not = ("the recording draws different random numbers than the eager computation"
                                 if not same_draws else f"the recording differs from the eager computation "
                                                        f"(relative error {error:.1e})")
            self.refuse(recording.why_not)
            return expected
        recording.verified = True
        exact = "bit for bit" if error == 0 else f"relative error {error:.1e} from"
        exact = f"fused kernels, {exact}" if recording.plain is not None else exact
        if device.type == "cuda":
            self._capture(recording, args, flat)
        self.note(f"compiled {self.what} for {recording.label} in {recording.seconds:.1f} s ({exact} the eager "
                  f"computation{', CUDA graph' if recording.cuda_graph is not None else ''})")
        return replayed

    def _capture(self, recording: Recording, args, flat) -> None:
        """Capture the replay in a CUDA graph: inputs copied into static buffers (the parameters are static
        already: the optimiser updates them in place), outputs in static buffers overwritten by each replay."""
        start = time.perf_counter()
        module = getattr(recording.graph, "args", (None,))[0]
        if isinstance(module, torch.fx.GraphModule) and "device(type='cpu')" in module.code:
            self.note(f"compile: no CUDA graph for {self.what} (it makes tensors on the CPU, which a graph would "
                      f"freeze); replaying without one")
            return
        try:
            static = [t if isinstance(t, torch.nn.Parameter) else t.clone() for t in flat]
            static_args = pytree.tree_unflatten(static, pytree.tree_structure(args))
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad(), torch.random.fork_rng(devices=[flat[-1].device]):
                recording.graph(*static_args)                    # warm-up run (allocations), off the stream
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                outputs = tuple(recording.graph(*static_args))
            recording.cuda_graph = (graph, static, outputs, [t.data_ptr() for t in static])
        except Exception as error:  # noqa: BLE001 - the plain replay still works
            self.note(f"compile: no CUDA graph for {self.what} ({_first_line(error)}); replaying without one")
        recording.seconds += time.perf_counter() - start


class CompiledFunction:
    """``fn(*tensors, **static) -> tuple of tensors``, recorded per value of ``static`` (hashable: sizes, names,
    programs) and shapes of ``tensors``, and replayed; calling it always returns the outputs (eagerly computed
    where nothing could be recorded).  ``fn`` must compute the same numbers each call for the same inputs and
    random state, as :class:`Recorder` checks on each recording's first replay."""

    def __init__(self, fn: Callable, mode: str = "auto", note: Callable[[str], None] = lambda line: None,
                 what: str = "the function", argname: str = "x", after: int = 0):
        self.fn, self._static = fn, {}
        self.recorder = Recorder(self._call, self._call, mode, note, rtol=0.0, what=what, argname=argname,
                                 after=after)

    def _call(self, *tensors):
        return tuple(self.fn(*tensors, **self._static))

    def __call__(self, *tensors: torch.Tensor, **static) -> Tuple[torch.Tensor, ...]:
        self._static = static
        out = self.recorder(tuple(sorted(static.items())), *tensors)
        return self._call(*tensors) if out is None else out


def _label(args, name: str) -> str:
    """What a recording is for: ``name`` and the shape of the first tensor argument (``x [100, 784]``)."""
    first = next((a for a in args if torch.is_tensor(a)), None)
    return f"{name} {list(first.shape) if first is not None else []}"


class CompiledStep:
    """The loss and parameter gradients of a training step, recorded once per input signature and replayed
    (a :class:`Recorder` of the step).

    Args:
        module: the ``nn.Module`` whose parameters are ``params`` (named by it, so they can be passed in).
        objective: the ``pyro.infer.ELBO`` the step minimises; ``num_data``: N, passed to the programs.
        params: the parameters, in the order the gradients come back.
        mode, note, rtol: as for :class:`Recorder`; data_parallel: the step is one of several processes' (those run
            eagerly: DDP's gradient all-reduce hooks into autograd).

    ``step(x, model, guide, **data)`` returns ``(loss, grads)`` for a batch ``x: [B, D]`` (``**data``: side
    inputs ``[B, ...]``), or None where the caller must take the eager step instead.
    """

    def __init__(self, module: torch.nn.Module, objective: ELBO, params: Sequence[torch.Tensor], num_data: int,
                 mode: str = "auto", note: Callable[[str], None] = lambda line: None, data_parallel: bool = False,
                 rtol: float = 1e-5):
        if mode not in MODES:                  # "fused" is the evaluators' only
            raise ValueError(f"compile must be one of {MODES}, got {mode!r}")
        self.module, self.objective, self.params, self.num_data = module, objective, list(params), num_data
        self.loss = recordable_loss(objective)
        names = {id(p): name for name, p in module.named_parameters()}
        self.names = [names.get(id(p)) for p in self.params]
        self.recorder = Recorder(self._traced, self._eager, mode, note, rtol, "the step")
        self.recorder.static_outputs = True     # the trainer uses a step's loss and gradients before the next
        self.recorder.buffers = module.buffers  # a recording must not change them (batch-norm statistics)
        self._programs: Tuple[Callable, Callable, Tuple[str, ...]] = (None, None, ())
        if mode != "off" and data_parallel:
            self.refuse("data-parallel steps run eagerly: DDP's gradient all-reduce hooks into autograd")
        elif mode != "off" and None in self.names:
            self.refuse(f"{self.names.count(None)} parameter(s) are pyro.params outside the module")

    disabled = property(lambda self: self.recorder.disabled)
    recordings = property(lambda self: self.recorder.recordings)
    seconds = property(lambda self: self.recorder.seconds)

    def refuse(self, why: str) -> None:
        self.recorder.refuse(why)

    def take_seconds(self) -> float:
        return self.recorder.take_seconds()

    def _traced(self, params, x, *values):
        model, guide, keys = self._programs
        with swapped_parameters(self.module, dict(zip(self.names, params))):
            loss = self.loss(model, guide, x, num_data=self.num_data, **dict(zip(keys, values)))
        return (loss, *torch.autograd.grad(loss, params))

    def _eager(self, params, x, *values):
        model, guide, keys = self._programs
        loss = self.objective.differentiable_loss(model, guide, x, num_data=self.num_data, **dict(zip(keys, values)))
        return (loss.detach(), *torch.autograd.grad(loss, params))

    def __call__(self, x: torch.Tensor, model: Callable, guide: Callable,
                 **data: torch.Tensor) -> Optional[Tuple[torch.Tensor, List[torch.Tensor]]]:
        if self.recorder.disabled is not None:
            return None
        keys = tuple(sorted(data))
        self._programs = (model, guide, keys)
        # the programs themselves (bound methods compare equal by instance and function), never a reusable id, and
        # every submodule's train/eval mode (dropout and batch norm are recorded as the mode had them)
        modes = tuple(m.training for m in self.module.modules())
        # and what else the recording bakes in: which parameters are trained, the objective's settings, the buffers
        # (constants of the recording: one replaced by assignment must be recorded again)
        trained = tuple(p.requires_grad for p in self.params)
        settings = tuple(sorted((k, v) for k, v in vars(self.objective).items()
                                if isinstance(v, (bool, int, float, str, type(None)))))
        buffers = tuple((id(b), b.data_ptr()) for b in self.module.buffers())
        out = self.recorder((model, guide, keys, modes, trained, settings, buffers), self.params, x,
                            *[data[k] for k in keys])
        return None if out is None else (out[0], list(out[1:]))
