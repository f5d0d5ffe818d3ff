"""``python -m experiments run STUDY --budget smoke|small|medium|full [--out DIR]``.

Writes ``experiments/results/STUDY/BUDGET/`` (or ``--out``): ``table.md``, ``metrics.json`` (with the exact
command, the git revisions that made the runs, the seeds and the machine) and the study's plot.  Each budget
has its own folder, so no budget's results overwrite another's.  Studies are resumable: a finished run's
``record.json`` is kept and served again (said so on the console) as long as it was made with the same
settings; one made with other settings is an error, never silently reused.
"""
import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from pyro_vae.data import DataError

from . import binarized_mnist, estimators, gaps, priors, priors_mnist
from .common import StudyError

STUDIES = {"estimators": estimators, "priors": priors, "priors-mnist": priors_mnist, "binarized-mnist": binarized_mnist,
           "gaps": gaps}
RESULTS = Path(__file__).resolve().parent / "results"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=RESULTS.parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pyro_vae", "experiments/*.py"],
                               capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a study")
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--budget", default="small", choices=("smoke", "small", "medium", "full"),
                   help="smoke: seconds (CI); small: minutes to hours on 2 CPU cores (each study's docstring "
                        "says how long); medium: binarized-mnist only, resumable over sessions (--hours); full: "
                        "paper scale, for a GPU")
    p.add_argument("--out", default=None, help="output folder (default: experiments/results/STUDY/BUDGET)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the data files (binarized-mnist and priors-mnist: binarized_mnist_*.amat[.gz]; "
                        "binarized-mnist also MNIST's IDX files; directly or in binarized_mnist/ and mnist/ "
                        "subfolders, e.g. ../shared/data; default: pyro_vae's data folder)")
    p.add_argument("--download", action="store_true",
                   help="download missing data files into --data-dir (needs internet)")
    p.add_argument("--hours", type=float, default=None,
                   help="binarized-mnist --budget medium: hours of training this invocation (it resumes where the "
                        "last one stopped; 0 only scores and tabulates)")
    p.add_argument("--rows", default=None,
                   help="binarized-mnist --budget medium: train only these runs this invocation, by folder name "
                        "without the seed, comma-separated (e.g. static-VAE_k1,static-IWAE_k5); the table keeps all")
    args = parser.parse_args(argv)
    if args.budget not in STUDIES[args.study].BUDGETS:
        parser.error(f"study {args.study} has budgets {', '.join(STUDIES[args.study].BUDGETS)}, not {args.budget}")
    out = Path(args.out) if args.out else RESULTS / args.study / args.budget
    command = "python -m experiments " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        hours = {} if args.hours is None else {"hours": args.hours}
        hours.update({"rows": args.rows.split(",")} if args.rows else {})
        if hours and "target_epochs" not in STUDIES[args.study].BUDGETS[args.budget]:
            parser.error("--hours and --rows are for a study trained in stages across sessions (binarized-mnist "
                         "--budget medium)")
        table = STUDIES[args.study].run(args.budget, out, command, git_revision(), data_dir=args.data_dir,
                                        download=args.download, **hours)
    except KeyboardInterrupt:
        print("python -m experiments: interrupted; every run keeps its checkpoint and finished runs their "
              "records: run the same command to resume", file=sys.stderr)
        return 130
    except (DataError, StudyError) as exc:
        print(f"python -m experiments: {exc}", file=sys.stderr)
        return 2
    print((out / "table.md").read_text())
    return 0 if table else 1


if __name__ == "__main__":
    sys.exit(main())
