"""A training run, assembled: config -> data -> model (contract-checked) -> :class:`~pyro_vae.training.Trainer`
-> fit -> test bounds, ``summary.json`` and figures (:func:`run`), with the checks that come first: resuming a
run with a compatible config, never overwriting one (:func:`check_start`), a finished run left alone
(:func:`finished_result`).  :func:`pyro_vae.launch.train` is the function the CLI calls: it holds the run folder
and runs this in one process or N.
"""
import copy
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import pyro

from .bounds import split_bounds
from .checkpoint import BEST, CONFIG, SUMMARY, atomic_write_text, load_checkpoint, migrate_history, refuse_overwrite
from .config import TrainConfig
from .contract import side_inputs
from .data import Dataset
from .devices import resolve_device
from .factory import build_model, config_bound_name, config_dataset, load_vae, module_record
from .parallel import SingleProcess
from .seeds import seed_for
from .tensorboard_hook import TensorBoardLogger, bound_tag
from .training import Trainer, best_epoch, epochs_since_best, resume_checkpoint
from .vae import VAE


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.  ``history`` has one dict per finished epoch (as in metrics.jsonl)."""
    model: Any
    history: List[Dict[str, float]]
    best_epoch: int
    best_val_bound: float   # the objective's bound on the validation set, named by ``bound``
    stop_reason: str        # "completed" | "early_stopping" | "interrupted"
    out_dir: Path
    bound: str = "ELBO"     # e.g. "IWAE_5": what early stopping compared (pyro_vae.objectives.bound_name)
    stop_signal: Optional[int] = None   # SIGINT or SIGTERM when a signal interrupted the run
    already_finished: bool = False      # a resume of a finished run: nothing was trained or rewritten

    @property
    def best_val_elbo(self) -> float:
        """The old name of :attr:`best_val_bound` (which holds the objective's bound: the ELBO only when
        ``bound == "ELBO"``)."""
        warnings.warn("TrainResult.best_val_elbo is best_val_bound, the objective's bound named by "
                      "TrainResult.bound; use those names", DeprecationWarning, stacklevel=2)
        return self.best_val_bound


def check_start(config: TrainConfig, resume: bool) -> Optional[Dict[str, Any]]:
    """The checkpoint to resume from (None for a fresh run), or a clear error: a resume without a
    checkpoint or with a changed config, a fresh run into a folder that holds one."""
    if resume:
        return resume_checkpoint(config)
    refuse_overwrite(config.out)   # checked here too, before minutes of data loading
    return None


def finished(ckpt: Dict[str, Any], config: TrainConfig) -> bool:
    """Whether the checkpointed run has nothing left to do under ``config`` (its epochs and patience)."""
    history = ckpt["history"]
    return bool(history) and ckpt["step"] == 0 and (
        ckpt["epoch"] >= config.epochs or 0 < config.patience <= epochs_since_best(migrate_history(history, "")))


def best_model(out: Path, device: Any, model: Optional[Any] = None) -> Optional[Any]:
    """The model of ``OUT/best.pt`` on ``device`` (None before it exists): rebuilt from the checkpoint, or, for a
    ``model`` the caller declared, a copy of it holding the best weights."""
    if not (out / BEST).exists():
        return None
    if model is None:
        return load_vae(out / BEST, map_location=str(device))[0].to(device)
    best = copy.deepcopy(model)
    best.load_state_dict(load_checkpoint(out / BEST, str(device))["model_state"])
    return best.to(device).eval()


def finished_result(config: TrainConfig, ckpt: Dict[str, Any], model: Optional[Any] = None) -> TrainResult:
    """What :func:`pyro_vae.train` returns for a run that had already finished (nothing trained or rewritten)."""
    out = Path(config.out)
    summary = json.loads((out / SUMMARY).read_text())
    model = best_model(out, "cpu", model)
    bound = config_bound_name(config)
    history = migrate_history(ckpt["history"], bound)
    epoch = best_epoch(history)
    return TrainResult(model, history, epoch, history[epoch - 1]["val_bound"], summary.get("stop_reason", "completed"),
                       out, bound, already_finished=True)


def run(config: TrainConfig, parallel: Optional[Any] = None, resume: bool = False,
        progress: Union[bool, str] = True, data: Optional[Dataset] = None, on_step: Optional[Callable] = None,
        figures: bool = True, model: Optional[Any] = None) -> TrainResult:
    """One process's part of a run: assemble the data, the model (contract-checked), the trainer; fit; then
    the test bounds, ``summary.json`` and the figures (and, with ``config.tensorboard``, TensorBoard's hparams tab
    with the test bounds).  ``parallel``: this process's :class:`~pyro_vae.parallel.DDPGroup`, or one process
    (default); ``progress``: see :class:`~pyro_vae.hooks.Progress`.  ``model``: a model declared in Python,
    trained in place of the one ``config`` describes.  The caller holds the run folder
    (:func:`pyro_vae.launch.train` takes its lock and starts the processes)."""
    out = Path(config.out)
    ckpt = check_start(config, resume)
    # a missing tensorboard package fails here, before minutes of data loading
    tensorboard = TensorBoardLogger.for_config(config, hparams_at_fit_end=False) if config.tensorboard else None
    device = parallel.device if parallel is not None else resolve_device(config.device)
    parallel = parallel if parallel is not None else SingleProcess(device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    if data is None:
        data = config_dataset(config, download=config.download)
    if model is not None:
        vae, extra = model, module_record(model, data.image_shape)
    else:
        vae, extra = build_model(config, data, fresh=ckpt is None)
    vae = vae.to(device)
    trainer = Trainer(vae, data, config, checkpoint_extra=extra, on_step=on_step, progress=progress,
                      parallel=parallel, hooks=[tensorboard] if tensorboard else [])
    if config.model and trainer.foreign_params:
        # best.pt and load_vae rebuild the module from its class and state_dict: pyro.param values outside
        # it would come back at their initial values in `evaluate`, `sample` and the summary's test bound
        raise ValueError(f"model class {config.model!r}: these parameters are pyro.param calls, not parameters of the "
                         f"module: {', '.join(sorted(trainer.foreign_params))}. Make them nn.Parameter (or "
                         f"PyroParam) attributes of the module, so checkpoints can rebuild the model")
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
    if parallel.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(config.to_dict(), indent=2) + "\n", out / CONFIG)
    stop_reason = trainer.fit()
    parallel.barrier()   # the writer has written best.pt
    best = best_model(out, device, model)
    best = vae if best is None else best
    if stop_reason != "interrupted":
        test_bound, test_elbo = split_bounds(trainer.objective, best, data.test.to(trainer.device),
                                             seed_for(config.seed, "test"), config.eval_batch_size, parallel,
                                             **side_inputs(best, data, "test", trainer.device))
        summary = {"bound": trainer.bound_name,                        # early stopping compared this bound
                   "best_epoch": trainer.best_epoch, "best_val_bound": trainer.best_val_bound,
                   "test_bound": test_bound, "test_elbo": test_elbo, "epochs_run": trainer.epoch,
                   "stop_reason": stop_reason, "num_train": trainer.num_train,
                   "seconds": sum(r["seconds"] for r in trainer.history)}
        if parallel.is_writer:
            atomic_write_text(json.dumps(summary, indent=2) + "\n", out / SUMMARY)
        if tensorboard is not None:
            test = {f"test_{bound_tag(trainer.bound_name)}": test_bound}
            if trainer.bound_name != "ELBO":
                test["test_ELBO"] = test_elbo
            tensorboard.write_hparams(trainer, test)
        if figures and parallel.is_writer:
            from .figures import write_run_figures
            from .plots import plot_training_curves
            try:
                if isinstance(best, VAE):
                    write_run_figures(best, data, trainer.history, out)
                else:   # a user model: the curves; its own figures are its author's to draw
                    plot_training_curves(trainer.history, out / "curves.png")
            except Exception as e:  # noqa: BLE001 - a figure must never turn a finished run into a failure
                warnings.warn(f"figures skipped: {e}")
    return TrainResult(best, trainer.history, trainer.best_epoch, trainer.best_val_bound, stop_reason, out,
                       trainer.bound_name, trainer.stop_signal)

