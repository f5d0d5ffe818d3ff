"""``pyro-vae train``: its flags (one per :class:`~pyro_vae.config.TrainConfig` field, in the config's
sections), the config they make (with ``--config FILE`` and ``--resume``), and the command itself.  The flag
types (``positive_int``, ``int_list``) serve every command."""
import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import List, Optional


from .config import LR_SCHEDULES, TrainConfig, load_config_file
from .data import BINARIZE_MODES, DATASETS, SCALE_UINT8_MODES
from .likelihoods import LIKELIHOODS, SIGMA_MODES
from .networks import ACTIVATIONS, NETWORKS
from .objectives import GRADIENTS, OBJECTIVES
from .priors import PRIORS
from .signals import exit_code, say
from .checkpoint import CHECKPOINT, SUMMARY, load_checkpoint
from .launch import train
from .tensorboard_hook import LOG_DIR, TensorBoardMissing, require_tensorboard

DEFAULTS = TrainConfig()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 400,400, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer sizes like 400,400, got {text!r}")
    return values


class _KeyValueAction(argparse.Action):
    """``--model-arg key=value`` (repeatable) -> a dict; values are JSON where they parse."""

    def __call__(self, parser, namespace, text, option_string=None):
        key, sep, value = text.partition("=")
        if not sep or not key.isidentifier():
            parser.error(f"{option_string} expects KEY=VALUE with KEY a Python name, got {text!r}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        current = dict(getattr(namespace, self.dest, None) or {})
        current[key] = parsed
        setattr(namespace, self.dest, current)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help=f"one of {', '.join(DATASETS)}, or a path to a .npy/.npz array file (default: %(default)s, "
                        "bundled with scikit-learn, works offline)")
    g.add_argument("--data-dir", default=d.data_dir,
                   help="folder with the data files (IDX files for mnist/fashion-mnist, .amat files for "
                        "binarized-mnist); fashion-mnist is also found where Debian's dataset-fashion-mnist "
                        "package put it")
    g.add_argument("--download", action="store_true", help="download missing data files (needs internet)")
    g.add_argument("--binarize", default=d.binarize, choices=("auto",) + BINARIZE_MODES,
                   help="none: grey levels; static: binarized once (fixed seed); dynamic: training data "
                        "resampled every epoch, valid/test binarized once; auto: dynamic for the bernoulli "
                        "likelihood, none otherwise and for binarized-mnist (default: %(default)s)")
    g.add_argument("--valid-size", type=int, default=d.valid_size,
                   help="training points held out for validation (default: the data set's own)")
    g.add_argument("--scale-uint8", default=d.scale_uint8, choices=SCALE_UINT8_MODES,
                   help=".npy/.npz data: divide uint8 pixels by 255 into [0, 1] where they exceed 1 (auto), whenever "
                        "they are uint8 (on), or never, keeping 0..255 (off); a line says when it happens "
                        "(default: %(default)s)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, metavar="PACKAGE.MODULE:CLASS",
                   help="train your own model (docs/declaring_models.md): an nn.Module subclass with model(x, "
                        "num_data) and guide(x, num_data), built with the arguments its signature names among "
                        "data_dim, image_shape, num_classes and the model flags you change (latent_dim, hidden, "
                        "activation, ...); the current folder is importable, e.g. "
                        "pyro_vae.examples.two_layer:TwoLayerVAE (default: our VAE)")
    g.add_argument("--model-arg", "--model-args", dest="model_args", action=_KeyValueAction, default=dict(d.model_args),
                   metavar="KEY=VALUE", help="extra keyword argument for --model's factory, repeatable; VALUE is "
                                             "read as JSON when it parses (3, 0.5, [200,200], true), else as text")
    g.add_argument("--network", default=d.network, choices=NETWORKS,
                   help="mlp, or conv for 2-D images (default: %(default)s)")
    g.add_argument("--hidden", type=int_list, default=list(d.hidden),
                   help="MLP hidden layer sizes, comma-separated, e.g. 400 or 400,400 (default: "
                        f"{','.join(map(str, d.hidden))})")
    g.add_argument("--channels", type=int_list, default=list(d.channels),
                   help=f"conv channels per stride-2 layer (default: {','.join(map(str, d.channels))})")
    g.add_argument("--latent-dim", type=int, default=d.latent_dim, help="Z, latent dimension (default: %(default)s)")
    g.add_argument("--activation", default=d.activation, choices=sorted(ACTIVATIONS),
                   help="hidden-layer nonlinearity (default: %(default)s)")
    g.add_argument("--likelihood", default=d.likelihood, choices=LIKELIHOODS,
                   help="p(x|z): bernoulli for binary data, continuous-bernoulli for values in [0,1], "
                        "gaussian for real values (default: %(default)s)")
    g.add_argument("--sigma", type=float, default=d.sigma,
                   help="gaussian likelihood: fixed sigma, or its initial value if learned (default: %(default)s)")
    g.add_argument("--learn-sigma", default=d.learn_sigma, choices=SIGMA_MODES,
                   help="gaussian likelihood: fixed sigma, one learned (global), or one per pixel "
                        "(default: %(default)s)")
    g.add_argument("--prior", default=d.prior, choices=PRIORS,
                   help="p(z): standard normal, mog (mixture of Gaussians) or vamp (VampPrior, Tomczak & "
                        "Welling 2018) (default: %(default)s)")
    g.add_argument("--prior-components", type=int, default=d.prior_components,
                   help="mixture components (mog) or pseudo-inputs (vamp) (default: %(default)s)")
    g.add_argument("--vamp-init", default=d.vamp_init, choices=("data", "random"),
                   help="vamp: pseudo-inputs start as random training points or near 0.5 (default: %(default)s)")
    g = p.add_argument_group("objective and optimisation")
    g.add_argument("--loss", default=d.loss, choices=OBJECTIVES,
                   help="elbo: Trace_ELBO (Monte-Carlo KL); meanfield: TraceMeanField_ELBO (analytic KL); "
                        "iwae: importance-weighted bound; miwae, ciwae, piwae: Rainforth et al. 2018 "
                        "(default: %(default)s)")
    g.add_argument("--num-particles", type=int, default=d.num_particles,
                   help="K, samples of z per data point per step, vectorized (per group for miwae/piwae) "
                        "(default: %(default)s)")
    g.add_argument("--gradient", default=d.gradient, choices=GRADIENTS,
                   help="guide-gradient estimator of iwae/miwae: standard (reparameterized), stl (sticking "
                        "the landing), dreg (doubly reparameterized) (default: %(default)s)")
    g.add_argument("--num-outer", type=int, default=d.num_outer,
                   help="M, groups of K particles for miwae/piwae (default: %(default)s)")
    g.add_argument("--ciwae-beta", type=float, default=d.ciwae_beta,
                   help="ciwae: weight of the ELBO term in beta*ELBO + (1-beta)*IWAE (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="minibatch size (default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    g.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                   help="none, exponential (x lr-gamma per epoch), cosine (to 0 at --epochs) or iwae (the IWAE "
                        "paper's: 3^i epochs at lr x 10^(-i/7) for i = 0..7, 3280 epochs in all) "
                        "(default: %(default)s)")
    g.add_argument("--lr-gamma", type=float, default=d.lr_gamma,
                   help="per-epoch factor of the exponential schedule (default: %(default)s)")
    g.add_argument("--clip-norm", type=float, default=d.clip_norm,
                   help="clip the global gradient norm to this value; 0 disables (default: %(default)s)")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help="KL warm-up: beta rises linearly from 0 to 1 over this many epochs; 0 disables "
                        "(default: %(default)s)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a better validation bound (the objective's: the "
                        "ELBO, or IWAE_K with --loss iwae, ...); 0 disables "
                        "(default: %(default)s)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size,
                   help="batch size for validation and test bounds (default: %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="read the settings from a .toml or .json file (sections [data] [model] [objective] [optim] "
                        "[run], or flat as in a run's config.json); flags typed on the command line override it")
    g.add_argument("--seed", type=int, default=d.seed, help="seed for weights, splits and sampling (default: %(default)s)")
    g.add_argument("--device", default=d.device, help="cpu, cuda or auto (default: %(default)s)")
    g.add_argument("--devices", type=int, default=d.devices, metavar="N",
                   help="data-parallel training processes (torch DistributedDataParallel): each trains on its "
                        "share of every batch and gradients are averaged, so a step is the one-process step; "
                        "CPU processes talk over gloo; with --device cuda (or auto where CUDA is present) "
                        "process r uses GPU r over nccl, which needs N GPUs. Checkpoints are written once and "
                        "resume on any N (default: %(default)s)")
    g.add_argument("--compile", default=d.compile, choices=("auto", "on", "off"),
                   help="record each training step once per batch shape and replay the recording (the same "
                        "numbers as the eager step, checked on its first replay, without Pyro's per-step Python); "
                        "auto runs eagerly, saying why, what it cannot record (Python control flow on data, "
                        "discrete latents, KL warm-up steps); on makes that an error (default: %(default)s)")
    g.add_argument("--out", default=d.out, help="output folder for checkpoints, metrics, config and figures "
                                                "(default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one plain line per epoch (epoch, training loss, validation bound, seconds), "
                        "what a log gets anyway when stderr is not a terminal")
    g.add_argument("--no-figures", action="store_true", help="do not write the PNG figures")
    g.add_argument("--tensorboard", action="store_true", default=d.tensorboard,
                   help="log to TensorBoard in OUT/tensorboard/ (view with: tensorboard --logdir OUT): per epoch the "
                        "training loss, the validation bound under its name, the learning rate and beta; image "
                        "grids; the settings and final metrics in the hparams tab. Needs pip install "
                        "'pyro_vae[tensorboard]'; may be turned on when resuming")
    g.add_argument("--tensorboard-images-every", type=positive_int, default=d.tensorboard_images_every, metavar="N",
                   help="--tensorboard: reconstruction and sample grids every N epochs, and at the first and the "
                        "last (default: %(default)s)")


def config_from_args(args: argparse.Namespace, explicit: Optional[set] = None) -> TrainConfig:
    """The :class:`TrainConfig` whose fields are the parsed flags of the same names.

    With ``--resume``, the run's saved config is the starting point, then ``--config FILE``'s settings, and
    only the flags typed on the command line (``explicit``) change them, so ``pyro-vae train --out DIR --resume
    --epochs 80`` and ``pyro-vae train --config run.toml --seed 1`` work.
    """
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    values = {name: getattr(args, name) for name in names}
    base = DEFAULTS.to_dict()
    config_file = getattr(args, "config", None)
    if args.resume:
        path = Path(args.out) / CHECKPOINT
        if not path.exists():
            raise FileNotFoundError(f"--resume given but there is no checkpoint at {path}")
        base.update(load_checkpoint(path)["config"])
    if config_file:
        base.update(load_config_file(config_file))
    if args.resume or config_file:
        explicit = set(names) if explicit is None else explicit
        values = {name: (values[name] if name in explicit else base[name]) for name in names}
    return TrainConfig.from_dict(values)


def _explicit_train_flags(argv: List[str]) -> set:
    """Names of the ``train`` flags given on the command line (parsed again with defaults suppressed)."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_train_flags(parser)
    for action in parser._actions:       # an absent flag then leaves no attribute behind
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv[1:])
    return set(vars(given))


def _cmd_train(args, argv) -> int:
    config = config_from_args(args, _explicit_train_flags(argv))
    if config.tensorboard:
        try:
            require_tensorboard()
        except TensorBoardMissing as e:   # a one-line error of the command (an ImportError from Python)
            raise ValueError(str(e)) from None
    # --no-progress: no bar, but never silent (a line per epoch); without a terminal the lines come anyway
    result = train(config, resume=args.resume, progress="lines" if args.no_progress else True,
                   figures=not args.no_figures)
    if result.stop_reason == "interrupted":
        say(f"Interrupted; checkpoint saved in {result.out_dir}. Continue with: "
            f"pyro-vae train --out {result.out_dir} --resume", sys.stdout)
        return exit_code(result.stop_signal)
    summary = json.loads((result.out_dir / SUMMARY).read_text())
    if result.already_finished:
        say(f"{result.out_dir} already finished ({summary['stop_reason']} after epoch {summary['epochs_run']}): "
            f"nothing to train and nothing rewritten (raise --epochs or --patience to continue it)", sys.stdout)
    say(train_summary_line(summary), sys.stdout)
    written = sorted(p.name for p in result.out_dir.iterdir() if p.suffix in (".pt", ".json", ".jsonl", ".png"))
    written += [f"{LOG_DIR}/ (tensorboard --logdir {result.out_dir})"] if (result.out_dir / LOG_DIR).is_dir() else []
    say(f"wrote {result.out_dir}/: {', '.join(written)}", sys.stdout)
    return 0


def train_summary_line(summary: dict) -> str:
    """The closing line of ``pyro-vae train``: every bound under its own name."""
    bound = summary["bound"]
    label = "ELBO" if bound == "ELBO" else f"{bound} bound"
    line = (f"best validation {label} {summary['best_val_bound']:.3f} nats at epoch {summary['best_epoch']} "
            f"(early stopping on it; {summary['stop_reason']}); test {label} {summary['test_bound']:.3f} nats")
    if bound != "ELBO":
        line += f", test ELBO (k=1) {summary['test_elbo']:.3f} nats"
    return line


def add_train_command(sub) -> None:
    """The ``train`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("train", help="train a VAE", description="Train a VAE with Pyro SVI. Writes OUT/checkpoint.pt "
                       "(every epoch), OUT/best.pt, OUT/metrics.jsonl, OUT/config.json, OUT/summary.json and figures.")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train)
