"""The commands on a trained run: ``sample``, ``reconstruct``, ``evaluate`` (importance sampling, AIS, the
inference gaps) and ``bdmc``; each reads a checkpoint (or a run folder's ``best.pt``) and writes next to it."""
import argparse
import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .contract import uses_labels
from .data import evaluation_indices
from .checkpoint import load_checkpoint
from .compiled import EVAL_MODES
from .devices import resolve_device
from .cli_train import int_list, positive_int
from .factory import config_dataset, load_vae


def _image_shape(checkpoint) -> Optional[List[int]]:
    ckpt = load_checkpoint(checkpoint)
    return ckpt.get("image_shape") or ckpt.get("model_kwargs", {}).get("image_shape")


def _labels_for(vae, labels: Optional[torch.Tensor]) -> dict:
    """``{"y": labels}`` for a model that takes labels, ``{}`` otherwise."""
    if not uses_labels(vae):
        return {}
    if labels is None:
        raise ValueError(f"{type(vae).__name__} is conditional on labels y, but this data split has none")
    return {"y": labels}


def _run_folder(checkpoint) -> Path:
    """The run folder a checkpoint argument names: the folder itself, or the folder holding the ``.pt`` file."""
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def _output_stem(args, default: str) -> Path:
    """``--out`` (a path without extension, relative to the current folder), else ``default`` in the run
    folder: what a command makes of a run is kept with the run."""
    out = Path(args.out) if args.out else _run_folder(args.checkpoint) / default
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _model_on_device(args, needs_data: bool = True):
    """The checkpoint's model (eval mode) and config, on ``--device``; ``needs_data``: the command reads the
    run's data set, so the checkpoint must hold the config that names it."""
    device = resolve_device(args.device)
    vae, config = load_vae(args.checkpoint, map_location=str(device))
    if needs_data and config is None:
        raise ValueError(f"{args.checkpoint} holds a model saved without its run's config, which names the data "
                         f"set this command reads: save it with pyro_vae.save(model, path, config=TrainConfig(...))")
    return vae.to(device), config, device


def _cmd_sample(args, argv) -> int:
    from .image_plots import plot_image_grid
    vae, _, device = _model_on_device(args, needs_data=False)
    if not callable(getattr(vae, "sample", None)):
        raise ValueError(f"{type(vae).__name__} has no sample(num_samples) method, which `pyro-vae sample` calls "
                         f"(see docs/declaring_models.md)")
    image_shape = _image_shape(args.checkpoint)
    torch.manual_seed(args.seed)
    if uses_labels(vae):
        if args.label is None:
            raise ValueError(f"{type(vae).__name__} is conditional on a class label: pass --label N")
        samples = vae.sample(args.num, y=torch.full((args.num,), args.label, dtype=torch.long, device=device))
    elif args.label is not None:
        raise ValueError(f"--label given, but {type(vae).__name__} does not take labels")
    else:
        samples = vae.sample(args.num)                              # [num, D]
    samples = samples.cpu()
    out = _output_stem(args, "samples")
    np.save(out.with_suffix(".npy"), samples.numpy())
    written = [out.with_suffix(".npy")]
    if image_shape:
        written.append(plot_image_grid(samples, image_shape, out.with_suffix(".png"),
                                       title=f"{args.num} samples E[x | z], z ~ p(z)"
                                             + (f", label {args.label}" if args.label is not None else "")))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _cmd_reconstruct(args, argv) -> int:
    from .image_plots import plot_reconstructions
    vae, config, device = _model_on_device(args)
    if not callable(getattr(vae, "reconstruct", None)):
        raise ValueError(f"{type(vae).__name__} has no reconstruct(x) method, which `pyro-vae reconstruct` calls "
                         f"(see docs/declaring_models.md)")
    image_shape = _image_shape(args.checkpoint)
    data = config_dataset(config, args.data_dir)
    # in dynamic mode the train split holds grey levels: show it as the model saw it in epoch 1
    split = data.train_epoch(0, config.seed) if args.split == "train" else data.split(args.split)
    rows = evaluation_indices(len(split), args.num)        # spread over the split, which may be sorted by class
    x = split[rows]
    labels = data.labels(args.split)
    labels = labels[rows].to(device) if labels is not None else None
    recon = vae.reconstruct(x.to(device), **_labels_for(vae, labels)).cpu()
    out = _output_stem(args, "reconstructions")
    np.save(out.with_suffix(".npy"), np.stack([x.numpy(), recon.numpy()]))
    written = [out.with_suffix(".npy")]
    if image_shape:
        written.append(plot_reconstructions(x, recon, image_shape, out.with_suffix(".png")))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _evaluation_inputs(args):
    """The checkpoint's model on ``--device`` and the points of ``--split`` (``--num`` of them spread evenly
    over it, :func:`~pyro_vae.data.evaluation_indices`: a split sorted by class, like Larochelle's binarized-MNIST
    test file, is never measured on its first class), with labels and the points' indices in the split."""
    vae, config, device = _model_on_device(args)
    data = config_dataset(config, args.data_dir)
    if args.split == "train" and data.binarize == "dynamic":
        raise ValueError("the train split is re-binarized every epoch (dynamic binarization); evaluate on "
                         "valid or test, which are binarized once")
    x, labels = data.split(args.split), data.labels(args.split)
    index = evaluation_indices(len(x), getattr(args, "num", None))
    x, labels = x[index].to(device), (labels[index].to(device) if labels is not None else None)
    return vae, x, labels, index


def _output_folder(args) -> Path:
    """``--out``, or the run folder of the checkpoint."""
    out = Path(args.out) if args.out else _run_folder(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _cmd_evaluate(args, argv) -> int:
    from .evaluation import JointLogLikelihood, evaluate
    if args.compile != "auto" and (args.gaps or args.method == "ais" or args.globals == "joint"):
        raise ValueError("--compile is for importance sampling of per-point log p(x) (--method is); AIS, --gaps and "
                         "--globals joint record what they can themselves")
    if args.gaps or args.method == "ais":
        return _cmd_evaluate_ais(args)
    vae, x, labels, index = _evaluation_inputs(args)
    torch.manual_seed(args.seed)
    summary = evaluate(vae.model, vae.guide, x, num_samples=args.num_samples, particle_chunk=args.particle_chunk,
                       batch_size=args.batch_size, progress=not args.no_progress, globals=args.globals,
                       num_global_samples=args.num_global_samples, compile=args.compile, **_labels_for(vae, labels))
    print(summary.headline())
    if isinstance(summary, JointLogLikelihood):
        print(f"  split {args.split}: {len(x)} points; nested importance sampling: J = {summary.num_global_samples} "
              f"draws of the global latents {', '.join(summary.global_latents)}, S = {args.num_samples} samples per "
              f"point and draw; effective sample size of the J draws {summary.effective_sample_size:.1f}")
        print(f"  ELBO = {summary.elbo:.2f} per point, inference gap log p(X)/N - ELBO = {summary.inference_gap:.2f} "
              f"nats")
    else:
        given = "" if summary.global_values is None else " (global latents at the guide's mean)"
        elbo = "ELBO" if summary.quantity == "log p(x)" else f"ELBO of {summary.quantity}"
        print(f"  split {args.split}: {len(x)} points, S = {args.num_samples} importance samples each{given} "
              f"(standard error over datapoints; Monte-Carlo error of the mean {summary.stderr_mc:.3f})")
        print(f"  {elbo} = {summary.elbo:.2f}, inference gap {summary.quantity} - ELBO = "
              f"{summary.inference_gap:.2f} nats")
        print("  IWAE_k: " + ", ".join(f"k={k}: {v:.2f}" for k, v in summary.iwae_curve.items()))
        ess = summary.effective_sample_size
        print(f"  effective sample size per point: median {ess.median():.0f}, min {ess.min():.1f} of "
              f"{args.num_samples}")
        if summary.active_units is not None:
            print(f"  active units: {summary.active_units} of {len(summary.latent_variances)} "
                  f"(Cov_x E_q[z_d | x] > 0.01)")
    path = _output_folder(args) / f"evaluation_{args.split}.json"
    record = {"checkpoint": str(args.checkpoint), "split": args.split, "seed": args.seed,
              "num_points": len(x), "indices": index.tolist(), **summary.to_dict()}
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


def _cmd_evaluate_ais(args) -> int:
    """``evaluate --method ais`` (AIS log p(x)) and ``evaluate --gaps`` (the inference-gap decomposition)."""
    from .ais import ais_log_likelihood
    from .gaps import inference_gaps
    from .bound_plots import plot_inference_gaps
    if args.globals:
        raise ValueError("--globals is for --method is; AIS and the gap decomposition need per-point latents only")
    vae, x, labels, index = _evaluation_inputs(args)
    torch.manual_seed(args.seed)
    settings = dict(num_chains=args.chains, leapfrog_steps=args.leapfrog_steps, batch_size=args.batch_size,
                    progress=not args.no_progress, **_labels_for(vae, labels))
    out = _output_folder(args)
    record = {"checkpoint": str(args.checkpoint), "split": args.split, "seed": args.seed, "num_points": len(x),
              "indices": index.tolist()}
    if args.gaps:
        result = inference_gaps(vae.model, vae.guide, x, num_samples=args.num_samples, ais_steps=args.ais_steps,
                                optimal_steps=args.optimal_steps, **settings)
        print(result.headline())
        print(result.table(Path(args.checkpoint).resolve().name))
        if not result.converged:
            print(f"  note: q* had not converged after {args.optimal_steps} Adam steps (raise --optimal-steps)")
        path = out / f"gaps_{args.split}.json"
        figure = plot_inference_gaps(
            [Path(args.checkpoint).resolve().name], [result.means["approximation_gap"]],
            [result.means["amortization_gap"]], out / f"gaps_{args.split}.png",
            [result.stderrs["approximation_gap"]], [result.stderrs["amortization_gap"]])
    else:
        result = ais_log_likelihood(vae.model, vae.guide, x, num_steps=args.ais_steps, init=args.init, **settings)
        print(result.headline())
        print(f"  split {args.split}: {len(x)} points; HMC acceptance {float(result.acceptance_rate.mean()):.2f}, "
              f"step sizes {result.step_size_range[0]:.3g} .. {result.step_size_range[1]:.3g}; standard error over "
              f"data points")
        path, figure = out / f"ais_{args.split}.json", None
    path.write_text(json.dumps({**record, **result.to_dict()}, indent=1) + "\n")
    print(f"wrote {path}" + (f", {figure}" if figure else ""))
    return 0


def _cmd_bdmc(args, argv) -> int:
    from .bdmc import bdmc
    from .bound_plots import plot_bdmc_bounds
    args.num = 1
    vae, x, _, _ = _evaluation_inputs(args)            # one point: the simulated data's shape, dtype and device
    if uses_labels(vae):
        raise ValueError(f"{type(vae).__name__} is conditional on labels; bdmc simulates unlabelled data only")
    torch.manual_seed(args.seed)
    result = bdmc(vae.model, vae.guide, args.num_points, like=x, num_steps=args.ais_steps, num_chains=args.chains,
                  leapfrog_steps=args.leapfrog_steps, init=args.init, batch_size=args.batch_size,
                  num_samples=args.num_samples, progress=not args.no_progress)
    print(result.headline())
    print(result.table())
    out = _output_folder(args)
    path = out / "bdmc.json"
    path.write_text(json.dumps({"checkpoint": str(args.checkpoint), "seed": args.seed, **result.to_dict()},
                               indent=1) + "\n")
    b = result.bounds
    figure = plot_bdmc_bounds([r.num_steps for r in b], [r.lower_mean for r in b], [r.upper_mean for r in b],
                              out / "bdmc.png", [r.gap_stderr for r in b],
                              reference={f"IWAE_{result.num_samples}": result.iwae_mean} if result.num_samples else None,
                              title=f"BDMC on {result.num_points} points simulated from {Path(args.checkpoint).name}")
    print(f"wrote {path}, {figure}")
    return 0


def _add_ais_flags(p: argparse.ArgumentParser, steps_default: str) -> None:
    g = p.add_argument_group("annealed importance sampling")
    g.add_argument("--ais-steps", type=int_list if "," in steps_default else positive_int,
                   default=int_list(steps_default) if "," in steps_default else int(steps_default),
                   help="annealing steps T (sigmoid schedule; HMC transitions in between) (default: %(default)s)")
    g.add_argument("--chains", type=positive_int, default=16, help="AIS chains per point (default: %(default)s)")
    g.add_argument("--leapfrog-steps", type=positive_int, default=10,
                   help="leapfrog steps per HMC transition (default: %(default)s)")
    g.add_argument("--init", default="guide", choices=("guide", "prior"),
                   help="where the chains start and the path begins: q(z|x) or p(z) (default: %(default)s)")


def add_model_commands(sub) -> None:
    """The ``sample``, ``reconstruct``, ``evaluate`` and ``bdmc`` subcommands on ``sub``."""
    p = sub.add_parser("sample", help="draw samples from a trained model's prior",
                       description="Decode z ~ p(z) with a trained model; writes OUT.npy and, for images, OUT.png "
                                   "(OUT: RUN/samples unless --out says otherwise).")
    p.add_argument("checkpoint", help="a checkpoint file (best.pt, checkpoint.pt) or a run folder (uses best.pt)")
    p.add_argument("--num", type=positive_int, default=64, help="number of samples (default: %(default)s)")
    p.add_argument("--label", type=int, default=None,
                   help="class to draw, for a model conditional on labels (e.g. pyro_vae.examples.conditional)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto: where the model runs (default: %(default)s)")
    p.add_argument("--out", default=None, help="output path without extension (default: RUN/samples, in the run "
                                               "folder of the checkpoint)")
    p.set_defaults(func=_cmd_sample)
    p = sub.add_parser("reconstruct", help="reconstruct data with a trained model",
                       description="Encode data to the posterior mean and decode it; writes OUT.npy "
                                   "([2, N, D]: inputs, reconstructions) and, for images, OUT.png (OUT: "
                                   "RUN/reconstructions unless --out says otherwise).")
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (uses best.pt)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"),
                   help="which split to reconstruct (default: %(default)s)")
    p.add_argument("--num", type=positive_int, default=20, help="number of data points, spread evenly over the split (every (N / NUM)-th; a "
                                                     "split may be sorted by class) (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="override the data folder stored in the checkpoint's config")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto: where the model runs (default: %(default)s)")
    p.add_argument("--out", default=None, help="output path without extension (default: RUN/reconstructions, in the "
                                               "run folder of the checkpoint)")
    p.set_defaults(func=_cmd_reconstruct)
    p = sub.add_parser("evaluate", help="importance-sampled held-out log p(x) of a trained model",
                       description="Estimate log p(x) per data point by importance sampling with the guide "
                                   "(log (1/S) sum_s p(x, z_s) / q(z_s | x)); prints 'log p(x) = MEAN ± SE nats' "
                                   "(standard error over data points) with the ELBO, the IWAE_k curve, effective "
                                   "sample sizes and active units, and writes OUT/evaluation_SPLIT.json with the "
                                   "per-datapoint values. Higher is better.")
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (uses best.pt)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"),
                   help="which split to evaluate (default: %(default)s)")
    p.add_argument("--num-samples", type=positive_int, default=5000,
                   help="S, importance samples per data point (default: %(default)s, as in the IWAE paper)")
    p.add_argument("--num", type=positive_int, default=None, 
                   help="evaluate NUM points spread evenly over the split (every (N / NUM)-th; never the first "
                        "NUM: a split may be sorted by class); default: all")
    p.add_argument("--particle-chunk", type=positive_int, default=500,
                   help="samples drawn at once; memory grows with chunk x batch (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=100,
                   help="data points at once (default: %(default)s)")
    p.add_argument("--compile", default="auto", choices=EVAL_MODES,
                   help="auto: record the log weights of each (batch, chunk) shape once and replay them (the same "
                        "numbers); off: eager; on: an error where a program cannot be recorded; fused: also compile "
                        "each recording with inductor (C++ kernels, 30-40%% less time on the CPU, equal to float rounding; "
                        "needs a C++ compiler, tens of seconds per shape) (default: %(default)s)")
    p.add_argument("--globals", default=None, choices=("condition", "joint"),
                   help="for a model with global latents g (sites outside the data plate), which has no per-point "
                        "log p(x): 'condition' reports log p(x | g) at the guide's mean of g, 'joint' log p(X)/N of "
                        "the whole split by nested importance sampling (default: refuse such a model)")
    p.add_argument("--num-global-samples", type=positive_int, default=100,
                   help="J, draws of the global latents for --globals joint (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="override the data folder stored in the checkpoint's config")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto: where the model and the samples live "
                                                   "(default: %(default)s)")
    p.add_argument("--out", default=None, help="folder for evaluation_SPLIT.json (default: the run folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--method", default="is", choices=("is", "ais"),
                   help="is: importance sampling with the guide (IWAE_S); ais: annealed importance sampling with HMC "
                        "(Wu et al. 2017), slower, accurate where the guide is poor; writes OUT/ais_SPLIT.json "
                        "(default: %(default)s)")
    p.add_argument("--gaps", action="store_true",
                   help="the inference-gap decomposition (Cremer et al. 2018): ELBO[q], ELBO[q*] (per-point optimised "
                        "guide), IWAE_S, AIS log p(x), the approximation and amortization gaps; writes "
                        "OUT/gaps_SPLIT.json and OUT/gaps_SPLIT.png")
    p.add_argument("--optimal-steps", type=positive_int, default=1000,
                   help="--gaps: at most this many Adam steps fitting q* per batch (default: %(default)s)")
    _add_ais_flags(p, "1000")
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("bdmc", help="sandwich log p(x) between forward and reverse AIS on simulated data",
                       description="Bidirectional Monte Carlo (Grosse et al. 2015): simulate (z, x) from the model, run "
                                   "AIS forwards (a stochastic lower bound on log p(x)) and backwards from z (an upper "
                                   "bound) for each step count; the gap says how far to trust AIS (and IWAE) on this "
                                   "model. Writes OUT/bdmc.json and OUT/bdmc.png.")
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (uses best.pt)")
    p.add_argument("--num-points", type=positive_int, default=100, help="simulated points (default: %(default)s)")
    _add_ais_flags(p, "100,1000,10000")
    p.add_argument("--num-samples", type=int, default=1000,
                   help="S of IWAE_S on the simulated points, shown beside the bounds; 0 skips it (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="points at once (default: %(default)s)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="override the data folder stored in the checkpoint's config")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--out", default=None, help="folder for bdmc.json and bdmc.png (default: the run folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bdmc)
