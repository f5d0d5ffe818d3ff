"""What a :class:`~pyro_vae.config.TrainConfig` builds: the model (our VAE, or a user's ``--model`` class on the
contract of :mod:`pyro_vae.contract`), its objective, optimiser and learning-rate schedule, the checks a data set
passes before training, and the rebuilt model of a checkpoint.

The special cases of our own VAE live here and nowhere else: a VampPrior's pseudo-inputs start at training points,
and the splits are checked against the likelihood once before training (``check_input``), not per step.
"""
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from pyro.infer import ELBO

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .contract import build_user_model, check_model, uses_labels
from .data import Dataset
from .objectives import bound_name, build_objective
from .vae import build_vae


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


def load_vae(path, map_location: str = "cpu") -> Tuple[Any, TrainConfig]:
    """Rebuild the model stored in a checkpoint file (or a run folder: its ``best.pt``) in eval mode: our
    :class:`~pyro_vae.VAE`, or a ``--model`` user model rebuilt from its factory and stored arguments."""
    ckpt = load_checkpoint(path, map_location)
    if "user_model" in ckpt:
        module, _ = build_user_model(ckpt["user_model"], {}, ckpt["user_model_kwargs"])
        module.load_state_dict(ckpt["model_state"])
        return module.to(map_location).eval(), TrainConfig.from_dict(ckpt["config"])
    if "model_kwargs" not in ckpt:
        raise ValueError(f"{path} holds a model declared in Python (a Trainer run, not `pyro-vae train`): "
                         f"rebuild it as you declared it and call "
                         f"model.load_state_dict(load_checkpoint(path)['model_state'])")
    vae = build_vae(**ckpt["model_kwargs"])
    vae.load_state_dict(ckpt["model_state"])
    return vae.eval(), TrainConfig.from_dict(ckpt["config"])


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
            warnings.warn(f"--model {config.model} does not take {', '.join(ignored)}: those flags are ignored "
                          f"(pass the model's own arguments with --model-arg KEY=VALUE)")
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
            raise ValueError(f"{split} split of {config.dataset!r}: {e}") from e


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
