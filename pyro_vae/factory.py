"""What a :class:`~pyro_vae.config.TrainConfig` builds: the model (our VAE, or a user's ``--model`` class on the
contract of :mod:`pyro_vae.contract`), its objective, optimiser and learning-rate schedule, the checks a data set
passes before training; and the one home of saving and loading a model: :func:`save` writes a model with what
rebuilds it, :func:`load` (and :func:`load_vae`, which also returns the run's config) rebuilds the model of any
checkpoint, a run folder or a saved file.

The special cases of our own VAE live here and nowhere else: a VampPrior's pseudo-inputs start at training points,
and the splits are checked against the likelihood once before training (``check_input``), not per step.
"""
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from pyro.infer import ELBO

from .checkpoint import atomic_save, load_checkpoint, model_checkpoint
from .config import TrainConfig
from .contract import build_user_model, check_model, uses_labels
from .data import Dataset, load_dataset
from .devices import resolve_device
from .objectives import bound_name, build_objective
from .specs import ARGS, CLASS, MODULE, SAME_AS, NotDescribable, describe
from .vae import build_vae
from .wording import cli_message, usage_error


def objective_for(config: TrainConfig) -> ELBO:
    """The ``pyro.infer.ELBO`` a run of ``config`` trains on (:func:`pyro_vae.objectives.build_objective`)."""
    return build_objective(config.loss, config.num_particles, config.gradient, config.num_outer, config.ciwae_beta)


def make_adam(params: List[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for these tensors (~3x faster steps on CPU for
    the same update rule), else the default implementation."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> Optional[Any]:
    """The learning-rate schedule ``config.lr_schedule`` names, stepped once per epoch (None: constant)."""
    if config.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.lr_schedule == "iwae":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, iwae_lr_factor)
    return None


def iwae_stage(epoch: int) -> int:
    """The stage i of the IWAE paper's schedule (Burda et al. 2016, sec. 5) that epoch ``epoch`` (0-based)
    falls in: stage i lasts 3^i epochs, so stages 0..7 end after 1, 4, 13, 40, 121, 364, 1093 and 3280
    epochs; later epochs stay in stage 7."""
    stage, end = 0, 1
    while epoch >= end and stage < 7:
        stage += 1
        end += 3 ** stage
    return stage


def iwae_lr_factor(epoch: int) -> float:
    """The learning rate of the IWAE paper's schedule relative to its first: 10^(-i/7) in stage i."""
    return 10 ** (-iwae_stage(epoch) / 7)


def config_bound_name(config: "TrainConfig") -> str:
    """The name of the bound a run of ``config`` trains on and validates with ("ELBO", "IWAE_5", ...)."""
    return bound_name(objective_for(config))


def load_vae(path, map_location: str = "cpu") -> Tuple[Any, Optional[TrainConfig]]:
    """Rebuild the model stored in a checkpoint file (or a run folder: its ``best.pt``) in eval mode, with the
    config of the run that trained it (None for a file :func:`save` wrote without one): our
    :class:`~pyro_vae.VAE`, a ``--model`` user model rebuilt from its class and stored arguments, or any module
    :func:`save` (or a :class:`~pyro_vae.training.Trainer`) wrote with its spec."""
    ckpt = load_checkpoint(path, map_location)
    config = TrainConfig.from_dict(ckpt["config"]) if ckpt.get("config") is not None else None
    if "module_spec" in ckpt:
        module = rebuild(ckpt["module_spec"])
    elif "user_model" in ckpt:
        module, _ = build_user_model(ckpt["user_model"], {}, ckpt["user_model_kwargs"])
    elif "model_kwargs" in ckpt:
        module = build_vae(**ckpt["model_kwargs"])
    else:
        raise ValueError(f"{path} holds a model declared in Python whose constructor arguments were not recorded: "
                         f"build it again as you declared it and call model.load_state_dict("
                         f"pyro_vae.checkpoint.load_checkpoint(path)['model_state']); next time save it with "
                         f"pyro_vae.save(model, path, init_args={{...}}), which pyro_vae.load reads")
    module.load_state_dict(ckpt["model_state"])
    return module.to(map_location).eval(), config


def load(path, device: str = "cpu") -> torch.nn.Module:
    """The model of ``path`` ready to use: rebuilt, its weights loaded, on ``device``, in eval mode.

    ``path`` is a file :func:`save` wrote, a run folder (its ``best.pt``, the model with the best validation
    bound) or a checkpoint file (``best.pt``, ``checkpoint.pt``) of ``pyro-vae train``, ``pyro_vae.train`` or
    a :class:`~pyro_vae.training.Trainer`; our VAE and ``--model`` user models alike.  Classes are imported by
    name (the current folder is importable), so a model of your own must be importable where you load it."""
    target = resolve_device(device)
    model, _ = load_vae(path, map_location=str(target))
    return model


def save(model: torch.nn.Module, path, init_args: Optional[Dict[str, Any]] = None, *,
         config: Optional[TrainConfig] = None, image_shape: Optional[Sequence[int]] = None) -> Path:
    """Write ``model`` to the file ``path`` (atomically) with what :func:`load` needs to rebuild it: its
    ``state_dict`` and its *spec*, the class's importable name and the constructor arguments.

    Our VAE and its parts record their arguments themselves, as does any class subclassing
    :class:`pyro_vae.specs.Recorded` and a ``--model`` class that :func:`load` or the command line built; for
    another ``nn.Module`` pass its constructor arguments as ``init_args`` (plain values, tensors, modules).
    ``config``: the run's settings, stored for ``pyro-vae evaluate``/``reconstruct`` (which read the data set
    from it); ``image_shape`` (C, H, W): lets ``pyro-vae sample`` draw an image grid.  Before writing, the model
    is built again from its spec (on a forked random stream) and must have the same ``state_dict`` keys and
    shapes.  Returns the path written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: save a model to a file, e.g. {path / 'model.pt'}")
    try:
        spec = describe(model, init_args)
    except NotDescribable as e:
        raise ValueError(f"cannot save {type(model).__name__}: {e}") from None
    with torch.random.fork_rng(devices=[]):
        again = rebuild(spec).state_dict()
    state = model.state_dict()
    wrong = sorted(k for k in set(state) | set(again)
                   if k not in state or k not in again or state[k].shape != again[k].shape)
    if wrong:
        raise ValueError(f"cannot save {type(model).__name__}: built again from its constructor arguments "
                         f"{sorted(spec[ARGS])} it differs in {', '.join(wrong[:5])}"
                         f"{' ...' if len(wrong) > 5 else ''} (pass the arguments it was built with as init_args)")
    extra = {"module_spec": spec, "image_shape": list(image_shape) if image_shape else None}
    atomic_save(model_checkpoint(config=config.to_dict() if config is not None else None, model_state=state,
                                 extra=extra), path)
    return path


def rebuild(spec: Dict[str, Any]) -> torch.nn.Module:
    """The module a spec of :func:`pyro_vae.specs.describe` describes, its constructors called again (each class
    must be an ``nn.Module`` subclass, as for ``--model``; a module given twice is built once)."""
    return _rebuild(spec, "model", {})


def _rebuild(spec: Dict[str, Any], where: str, built: Dict[str, Any]) -> torch.nn.Module:
    args = {name: _rebuilt(value, f"{where}.{name}", built) for name, value in spec[ARGS].items()}
    module, _ = build_user_model(spec[CLASS], {}, args)
    built[where] = module
    return module


def _rebuilt(value: Any, where: str, built: Dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_rebuilt(v, f"{where}[{i}]", built) for i, v in enumerate(value)]
    if isinstance(value, dict) and MODULE in value:
        return _rebuild(value[MODULE], where, built)
    if isinstance(value, dict) and SAME_AS in value:
        return built[value[SAME_AS]]
    if isinstance(value, dict):
        return {k: _rebuilt(v, f"{where}.{k}", built) for k, v in value.items()}
    return value


def module_record(module: Any, image_shape: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """What a checkpoint of a model declared in Python stores to rebuild it: its spec (``{}`` where its
    constructor arguments are unknown: :func:`load` then says how to reload it) and the data's image shape."""
    try:
        spec = describe(module)
    except NotDescribable:
        return {}
    return {"module_spec": spec, "image_shape": list(image_shape) if image_shape else None}


def config_dataset(config: TrainConfig, data_dir: Optional[str] = None, download: bool = False) -> Dataset:
    """The data set a run of ``config`` trains on (:func:`~pyro_vae.data.load_dataset` with its data settings);
    ``data_dir`` overrides the config's folder, ``download`` fetches missing files."""
    return load_dataset(config.dataset, data_dir or config.data_dir, config.resolved_binarize(), config.valid_size,
                        config.seed, download, scale_uint8=config.scale_uint8)


def model_kwargs(config: TrainConfig, data: Dataset) -> Dict[str, Any]:
    """The arguments of :func:`build_vae` for this config and data set (stored in checkpoints)."""
    return dict(data_dim=data.data_dim, latent_dim=config.latent_dim, hidden=list(config.hidden),
                network=config.network, image_shape=list(data.image_shape) if data.image_shape else None,
                activation=config.activation, likelihood=config.likelihood, sigma=config.sigma,
                learn_sigma=config.learn_sigma, prior=config.prior, channels=list(config.channels),
                prior_components=config.prior_components)


# settings of TrainConfig that describe our VAE; a --model factory receives those its signature names
MODEL_SETTINGS = ("latent_dim", "hidden", "activation", "likelihood", "network", "channels", "sigma", "learn_sigma",
                  "prior", "prior_components", "vamp_init")


def user_model_offer(config: TrainConfig, data: Dataset) -> Dict[str, Any]:
    """Settings offered to a ``--model`` factory, which receives those its signature names: what the data
    set fixes (``data_dim``, ``image_shape``, ``num_classes``) always, and the model settings only where
    they differ from their defaults (so the factory's own defaults hold unless a flag changes them)."""
    labels = data.train_labels
    offer = dict(data_dim=data.data_dim, image_shape=list(data.image_shape) if data.image_shape else None,
                 num_classes=int(labels.max()) + 1 if labels is not None and len(labels) else None)
    defaults = TrainConfig()
    for name in MODEL_SETTINGS:
        value = getattr(config, name)
        if value != getattr(defaults, name):
            offer[name] = list(value) if isinstance(value, tuple) else value
    return offer


def build_model(config: TrainConfig, data: Dataset, fresh: bool = True) -> Tuple[Any, Dict[str, Any]]:
    """The model ``config`` describes for ``data`` and what checkpoints store to rebuild it (``model_kwargs``,
    or ``user_model`` and its arguments, and the data's ``image_shape``).  ``fresh``: a new run, not a resume
    (only then do a VampPrior's pseudo-inputs start at training points: a resume loads them)."""
    if config.model:   # a user model declared on the contract of pyro_vae.contract
        offer = user_model_offer(config, data)
        model, kwargs = build_user_model(config.model, offer, config.model_args)
        ignored = sorted(k for k in offer if k in MODEL_SETTINGS and k not in kwargs)
        if ignored:
            warnings.warn(f"the model class {config.model!r} does not take {', '.join(ignored)}: those settings are "
                          f"ignored (pass the model's own arguments as model_args={{...}}, --model-arg KEY=VALUE on "
                          f"the command line)")
        extra = {"user_model": config.model, "user_model_kwargs": kwargs}
    else:
        kwargs = model_kwargs(config, data)
        model = build_vae(**kwargs)
        if config.prior == "vamp" and config.vamp_init == "data" and fresh:
            model.prior.init_from_data(data.train, torch.Generator().manual_seed(config.seed))
        extra = {"model_kwargs": kwargs}
    extra["image_shape"] = list(data.image_shape) if data.image_shape else None   # for `pyro-vae sample`
    return model, extra


def check_splits(model: Any, data: Dataset, config: TrainConfig) -> None:
    """Every split checked once by the model's ``check_input`` (where it has one): a clear error naming the
    split before any work, then no check per step."""
    if not hasattr(model, "check_input"):
        return
    for split in ("train", "valid", "test"):
        try:
            model.check_input(data.split(split) if data.binarize != "dynamic" or split != "train"
                              else data.train_epoch(0, config.seed))
        except ValueError as e:
            where = f"{split} split of {config.dataset!r}"
            raise usage_error(ValueError, f"{where}: {e}", f"{where}: {cli_message(e)}") from e


def check_training(module: Any, objective: ELBO, data: Dataset, config: TrainConfig, device: torch.device) -> None:
    """Everything checked once before the first step, each with a clear error: labels on every split for a model
    that takes them, every split against the model's ``check_input`` (:func:`check_splits`), and the contract's
    plates on a few validation points (:func:`~pyro_vae.contract.check_model`, on a forked random stream)."""
    missing = [split for split in ("train", "valid", "test") if data.labels(split) is None]
    if uses_labels(module) and missing:
        raise ValueError(f"{type(module).__name__}.model takes labels y, but the data set {data.name!r} has no "
                         f"labels for its {', '.join(missing)} split(s)")
    check_splits(module, data, config)
    if data.valid.shape[0] >= 3:
        # the objective's data plate (IWAE_ELBO(plate=...)), else the module's (VAE(data_plate=...))
        plate = getattr(objective, "plate", None) or getattr(module, "data_plate", "data")
        labels = {"y": data.labels("valid").to(device)} if uses_labels(module) else {}
        check_model(module, data.valid.to(device), num_data=data.train.shape[0], plate=plate, **labels)
