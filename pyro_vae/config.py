"""The run configuration: everything a training run depends on, as one flat dataclass read and written in
sections.

:class:`TrainConfig` is flat on purpose: the CLI's flags, ``config.json`` of every run so far, the studies and
user code all name its fields directly (``TrainConfig(epochs=10, loss="iwae")``).  :data:`SECTIONS` groups
the fields (data / model / objective / optim / run) for files a person writes and reads::

    # run.toml, given as  pyro-vae train --config run.toml  (flags typed after it override it)
    [data]
    dataset = "fashion-mnist"
    [objective]
    loss = "iwae"
    num_particles = 5

:func:`load_config_file` reads such a TOML (or JSON) file, nested or flat (a run's own ``config.json`` is a
valid ``--config``); an unknown section or key, or a key in the wrong section, is an error that names it.
"""
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .data import BINARIZE_MODES, SCALE_UINT8_MODES
from .devices import DEVICE_HELP, valid_device_name
from .wording import usage_error

LR_SCHEDULES = ("none", "exponential", "cosine", "iwae")
# Changing these between a run and its --resume cannot corrupt the saved state.
RESUMABLE_CHANGES = ("epochs", "patience", "out", "device", "data_dir", "download", "eval_batch_size", "clip_norm",
                     "devices", "compile", "tensorboard", "tensorboard_images_every")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on.  The CLI flags map one to one onto these fields; the comments
    mark the :data:`SECTIONS` of a config file."""

    # data
    dataset: str = "digits"          # embedded default: scikit-learn's 8x8 digits, works offline
    data_dir: Optional[str] = None
    download: bool = False           # opt-in: never touch the network unless asked
    binarize: str = "auto"           # auto: dynamic for the Bernoulli likelihood (binary data, resampled
                                     # every epoch), none for the others and for already-binary data
    valid_size: Optional[int] = None  # None: the data set's default hold-out size
    scale_uint8: str = "auto"        # .npy/.npz: divide uint8 pixels by 255 where above 1 (auto), always (on), never (off)
    # model
    model: Optional[str] = None      # "package.module:Class": a user model (pyro_vae.contract); None: our VAE
    model_args: Dict[str, Any] = dataclasses.field(default_factory=dict)   # extra keyword arguments of the factory
    network: str = "mlp"
    hidden: Tuple[int, ...] = (256, 256)  # digits are 64-dim: two 256-unit layers train in seconds
    channels: Tuple[int, ...] = (32, 64)  # conv network only
    latent_dim: int = 8
    activation: str = "relu"
    likelihood: str = "bernoulli"
    sigma: float = 0.1               # gaussian likelihood: fixed sigma, or initial value if learned
    learn_sigma: str = "fixed"       # fixed | global | pixel
    prior: str = "standard"          # standard | mog | vamp
    prior_components: int = 10       # C mixture components (mog) or K pseudo-inputs (vamp; 500 in the paper)
    vamp_init: str = "data"          # vamp: pseudo-inputs start as random training points (data) or near 0.5 (random)
    # objective
    loss: str = "elbo"               # elbo | meanfield | iwae | miwae | ciwae | piwae (pyro_vae.objectives)
    num_particles: int = 1           # K: samples of z per data point (per group for miwae/piwae)
    gradient: str = "standard"       # iwae/miwae guide gradient: standard | stl | dreg
    num_outer: int = 1               # M: groups of K particles for miwae/piwae
    ciwae_beta: float = 0.5          # ciwae: weight of the ELBO term
    # optimisation
    epochs: int = 300               # digits: ~1 minute on 2 CPU cores; early stopping usually ends it sooner
    batch_size: int = 100
    lr: float = 1e-3                 # Adam's usual default; stable for every likelihood here
    lr_schedule: str = "none"        # none | exponential (x lr_gamma per epoch) | cosine (to 0 at `epochs`)
                                     # | iwae (the IWAE paper's: 3^i epochs at lr * 10^(-i/7), i = 0..7)
    lr_gamma: float = 0.99
    clip_norm: float = 0.0           # global gradient-norm clipping; 0 disables it
    warmup_epochs: float = 0.0       # KL warm-up length; 0 disables it
    patience: int = 20               # early stopping after this many epochs without a better val bound; 0 disables it
    # run
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "cpu"              # cpu | cuda | auto
    devices: int = 1                 # data-parallel processes (pyro_vae.launch): gloo on CPU, nccl on GPUs
    compile: str = "auto"            # auto | on | off: record each step once per batch shape and replay it
                                     # (pyro_vae.compiled); auto runs eagerly, saying why, what it cannot record
    out: str = "runs/default"
    tensorboard: bool = False        # TensorBoard event files in OUT/tensorboard/ (pyro_vae.tensorboard_hook; needs
                                     # pip install 'pyro_vae[tensorboard]')
    tensorboard_images_every: int = 10   # TensorBoard image grids every N epochs (and at the first and the last)

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        self.model_args = dict(self.model_args or {})
        self.channels = tuple(int(c) for c in self.channels)
        problems = []
        for name in ("epochs", "batch_size", "latent_dim", "num_particles", "num_outer", "eval_batch_size",
                     "prior_components", "devices", "tensorboard_images_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < self.devices:
            problems.append(f"batch_size ({self.batch_size}) must be >= devices ({self.devices}): every process "
                            f"trains on its share of each batch")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 < self.lr_gamma <= 1:
            problems.append(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        for name in ("clip_norm", "warmup_epochs", "patience"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                problems.append(f"{name} must be a finite number >= 0, got {value}")
        if self.vamp_init not in ("data", "random"):
            problems.append(f"vamp_init must be data or random, got {self.vamp_init!r}")
        if self.scale_uint8 not in SCALE_UINT8_MODES:
            problems.append(f"scale_uint8 must be one of {SCALE_UINT8_MODES}, got {self.scale_uint8!r}")
        if self.binarize not in ("auto",) + BINARIZE_MODES:
            problems.append(f"binarize must be auto or one of {BINARIZE_MODES}, got {self.binarize!r}")
        if not self.hidden or min(self.hidden) < 1:
            problems.append(f"hidden must be one or more positive layer sizes, got {self.hidden}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.compile not in ("auto", "on", "off"):
            problems.append(f"compile must be auto, on or off, got {self.compile!r}")
        if not valid_device_name(self.device):
            problems.append(f"device must be {DEVICE_HELP}, got {self.device!r}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def resolved_binarize(self) -> str:
        """The binarization mode ``auto`` stands for with this likelihood and data set."""
        if self.binarize != "auto":
            return self.binarize
        return "dynamic" if self.likelihood == "bernoulli" and self.dataset != "binarized-mnist" else "none"

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """Build a config, rejecting unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)



def check_resume(saved: Dict[str, Any], config: TrainConfig, path) -> None:
    """Refuse to resume the run whose checkpoint ``path`` saved config ``saved`` under ``config`` if a setting
    outside :data:`RESUMABLE_CHANGES` changed (or ``epochs`` under a cosine schedule), listing every change.
    A setting the saved config lacks (a run made before it existed) counts as its default."""
    saved = {**TrainConfig().to_dict(), **saved}
    changed = {k: (saved.get(k), v) for k, v in config.to_dict().items()
               if saved.get(k) != v and k not in RESUMABLE_CHANGES}
    if saved.get("lr_schedule") == "cosine" and saved.get("epochs") != config.epochs:
        changed["epochs"] = (saved.get("epochs"), config.epochs)   # the cosine schedule is fixed by epochs
    if changed:
        listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        what = f"cannot resume {path} with a different config ({listing}); only {', '.join(RESUMABLE_CHANGES)} may"
        raise usage_error(ValueError,
                          f"{what} change when resuming (epochs not with lr_schedule='cosine', whose schedule ends "
                          f"at the original epochs)",
                          f"{what} change on --resume (epochs not with --lr-schedule cosine, whose schedule ends at "
                          f"the original --epochs)")


SECTIONS: Dict[str, Tuple[str, ...]] = {
    "data": ("dataset", "data_dir", "download", "binarize", "valid_size", "scale_uint8"),
    "model": ("model", "model_args", "network", "hidden", "channels", "latent_dim", "activation", "likelihood",
              "sigma", "learn_sigma", "prior", "prior_components", "vamp_init"),
    "objective": ("loss", "num_particles", "gradient", "num_outer", "ciwae_beta"),
    "optim": ("epochs", "batch_size", "lr", "lr_schedule", "lr_gamma", "clip_norm", "warmup_epochs", "patience"),
    "run": ("eval_batch_size", "seed", "device", "devices", "compile", "out", "tensorboard",
            "tensorboard_images_every"),
}
assert sorted(sum(SECTIONS.values(), ())) == sorted(f.name for f in dataclasses.fields(TrainConfig))


def to_sections(config: TrainConfig) -> Dict[str, Dict[str, Any]]:
    """The config as ``{section: {field: value}}`` (what :func:`load_config_file` reads back)."""
    flat = config.to_dict()
    return {section: {name: flat[name] for name in names} for section, names in SECTIONS.items()}


def flatten(values: Dict[str, Any], source: str = "the config") -> Dict[str, Any]:
    """Config values given flat (``{"epochs": 3}``, a run's ``config.json``) or in sections (``{"optim":
    {"epochs": 3}}``) as a flat dict of field values; anything unknown or misplaced is an error."""
    known = {name: section for section, names in SECTIONS.items() for name in names}
    flat = {}
    for key, value in values.items():
        if key in SECTIONS and (isinstance(value, dict) or key not in known):   # ("model" is a key too)
            if not isinstance(value, dict):
                raise ValueError(f"{source}: section [{key}] must be a table of settings, got {value!r}")
            for name, item in value.items():
                if name not in SECTIONS[key]:
                    where = f" (it belongs in [{known[name]}])" if name in known else ""
                    raise ValueError(f"{source}: unknown key {name!r} in [{key}]{where}; [{key}] takes "
                                     f"{', '.join(SECTIONS[key])}")
                flat[name] = item
        elif key in known:
            flat[key] = value
        else:
            raise ValueError(f"{source}: unknown key {key!r}; sections are {', '.join(SECTIONS)}, and the known keys "
                             f"{', '.join(sorted(known))}")
    return flat


def load_config_file(path) -> Dict[str, Any]:
    """The settings in a ``.toml`` or ``.json`` file (see the module docstring), flat; a clear error for a
    missing, unreadable or unknown-keyed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:                        # Python < 3.11
                import tomli as tomllib
            values = tomllib.loads(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise ValueError(f"{path}: a config file is .toml or .json, got {path.suffix or 'no suffix'!r}")
    except (ValueError, ImportError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path} is not a readable config file: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a table of settings, got {type(values).__name__}")
    return flatten(values, str(path))
