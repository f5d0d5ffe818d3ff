"""Time per test point and peak memory of AIS log p(x) (1000 steps x 16 chains, 10 leapfrog steps) against
importance sampling (S = 5000), on the same 784-400-20 Bernoulli VAE, in one run; and where AIS's time goes.

Setting (issue 13): the VAE of ``benchmarks/log_likelihood.py`` (untrained weights: the cost does not depend on
them; ``--train-epochs N`` trains it briefly on the points first), statically binarized Fashion-MNIST test
points where Debian's dataset-fashion-mnist is installed, else random binary images.  Each estimator runs in its
own child process (peak resident memory sampled every 2 ms above the child's baseline); AIS on
``--ais-points`` points in one batch (chains x points rows per gradient), IS on ``--is-points`` in its default
chunks (500 samples x 100 points).

Then a profile of a few AIS temperatures in this process (``torch.profiler``): the share of the time in the
decoder's matrix products forward and backward, the Bernoulli log-density, the rest of autograd, and the
Python around them (Pyro's traces and replay, the HMC arithmetic), and the number of gradient evaluations per
temperature (one fused ``autograd.grad`` per leapfrog step for all chains and points, plus one at each new
temperature).

    python benchmarks/ais.py [--ais-points 20] [--is-points 200] [--ais-steps 1000] [--threads 2]
"""
import argparse
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from log_likelihood import D, HIDDEN, LATENT, _PeakRSS, load_points  # noqa: E402


def build(train_epochs: int, x: torch.Tensor):
    from pyro.infer import Trace_ELBO
    from pyro_vae import build_vae
    torch.manual_seed(0)
    vae = build_vae(D, LATENT, HIDDEN)
    if train_epochs:
        optim = torch.optim.Adam(vae.parameters(), lr=1e-3)
        for _ in range(train_epochs):
            for batch in torch.randperm(len(x)).split(100):
                loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x[batch], num_data=len(x)) / len(x)
                optim.zero_grad()
                loss.backward()
                optim.step()
    return vae.eval()


def _child(which, points_file, state_file, args, queue):
    torch.set_num_threads(args.threads)
    from pyro_vae import ais_log_likelihood, build_vae, log_likelihood
    vae = build_vae(D, LATENT, HIDDEN).eval()
    vae.load_state_dict(torch.load(state_file))
    x = torch.load(points_file)
    sampler = _PeakRSS()
    torch.manual_seed(1)
    t0 = time.perf_counter()
    if which == "ais":
        xs = x[:args.ais_points]
        result = ais_log_likelihood(vae.model, vae.guide, xs, num_chains=args.chains, num_steps=args.ais_steps,
                                    leapfrog_steps=args.leapfrog_steps, batch_size=args.ais_points)
        values, extra = result.log_likelihood, f"acceptance {float(result.acceptance_rate.mean()):.2f}"
    else:
        xs = x[:args.is_points]
        values, extra = log_likelihood(vae.model, vae.guide, xs, num_samples=args.num_samples), ""
    seconds = time.perf_counter() - t0
    queue.put((which, seconds / len(xs), sampler.stop(), float(values[:args.ais_points].mean()), len(xs), extra))


def profile(vae, x, args, temperatures: int = 20):
    """Where a few AIS temperatures spend their time: the wall time per gradient evaluation without the profiler,
    then torch.profiler's self time per op group; the rest of the wall time is Python around the ops (Pyro's
    traces and replay, the HMC loop).  Also counts the gradient evaluations per temperature."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    from pyro_vae.ais import ais_log_likelihood
    xs = x[:args.ais_points]

    def run():
        torch.manual_seed(0)
        ais_log_likelihood(vae.model, vae.guide, xs, num_chains=args.chains, num_steps=temperatures,
                           leapfrog_steps=args.leapfrog_steps, batch_size=args.ais_points)
    run()                                                                     # warm-up
    calls = {"grad": 0}
    original = torch.autograd.grad

    def counted(*a, **k):
        calls["grad"] += 1
        return original(*a, **k)
    torch.autograd.grad = counted
    try:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    finally:
        torch.autograd.grad = original
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = prof.key_averages()
    groups = {"matrix products (decoder) fwd+bwd": ("aten::addmm", "aten::mm"),
              "Bernoulli log-density fwd+bwd": ("log_sigmoid", "binary_cross_entropy", "aten::sigmoid"),
              "activations fwd+bwd": ("relu", "threshold")}
    shares = {name: sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys)) / 1e6
              for name, keys in groups.items()}
    total_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    shares["other torch ops (elementwise, sums, HMC arithmetic)"] = total_ops - sum(shares.values())
    evaluations = calls["grad"]
    print(f"\nprofile: {temperatures} temperatures ({temperatures - 1} HMC transitions, L = {args.leapfrog_steps}) on "
          f"{len(xs)} points x {args.chains} chains = {len(xs) * args.chains} rows per gradient: {wall:.2f} s, "
          f"{evaluations} gradient evaluations ({(evaluations - 1) / (temperatures - 1):.0f} per transition: one per "
          f"leapfrog step and one at each new temperature, each one autograd.grad for all rows), "
          f"{1000 * wall / evaluations:.1f} ms each")
    for name, seconds in shares.items():
        print(f"  {name:<52s} {1000 * seconds / evaluations:6.2f} ms  {100 * seconds / wall:5.1f} %")
    python = wall - total_ops
    print(f"  {'Python around the ops (Pyro traces and replay, HMC loop)':<52s} {1000 * python / evaluations:6.2f} ms  "
          f"{100 * python / wall:5.1f} %   (wall without the profiler - op self times with it)")
    print("  top ops by self CPU time (per gradient evaluation):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]:
        print(f"    {e.key:<36s} {1000 * e.self_cpu_time_total / 1e6 / evaluations:6.2f} ms  x{e.count / evaluations:.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ais-points", type=int, default=20)
    parser.add_argument("--is-points", type=int, default=200)
    parser.add_argument("--ais-steps", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--leapfrog-steps", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--train-epochs", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    x, source = load_points(max(args.ais_points, args.is_points, 1000 if args.train_epochs else 0))
    vae = build(args.train_epochs, x)
    points_file = tempfile.NamedTemporaryFile(suffix=".pt", delete=False).name
    state_file = tempfile.NamedTemporaryFile(suffix=".pt", delete=False).name
    torch.save(x, points_file)
    torch.save(vae.state_dict(), state_file)
    ctx = mp.get_context("spawn")
    results = {}
    for which in (() if args.profile_only else ("is", "ais")):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(which, points_file, state_file, args, queue))
        proc.start()
        results[which] = queue.get()
        proc.join()
    os.unlink(points_file)
    os.unlink(state_file)

    if args.profile_only:
        return profile(vae, x, args)
    print(f"AIS vs IS: 784-400-20 Bernoulli VAE ({'trained ' + str(args.train_epochs) + ' epochs' if args.train_epochs else 'untrained'}); "
          f"data: {source}; torch {torch.__version__}, {args.threads} threads, {platform.machine()}, python "
          f"{platform.python_version()}")
    labels = {"is": f"IS  S={args.num_samples}", "ais": f"AIS T={args.ais_steps} x C={args.chains}, L={args.leapfrog_steps}"}
    for which in ("is", "ais"):
        _, per_point, peak, mean, n, extra = results[which]
        print(f"  {labels[which]:<28s} {per_point:9.3f} s/point  ({n} points)  peak +{peak:6.0f} MiB  mean log p(x) "
              f"on the first {args.ais_points} points {mean:9.3f}  {extra}")
    print(f"RATIO AIS/IS time per point = {results['ais'][1] / results['is'][1]:.1f}")
    if not args.no_profile:
        profile(vae, x, args)


if __name__ == "__main__":
    main()
