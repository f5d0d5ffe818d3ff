"""The ``pyro-vae`` command line: maps flags onto a config and calls one library function.

    pyro-vae train [flags]            train a VAE (default: the embedded 8x8 digits), see --help
    pyro-vae sample CHECKPOINT        decode draws from the prior to an image grid (and .npy)
    pyro-vae reconstruct CHECKPOINT   show data next to its reconstructions
    pyro-vae evaluate CHECKPOINT      importance-sampled held-out log p(x) with error bars (--method ais: AIS;
                                      --gaps: the inference-gap decomposition)
    pyro-vae bdmc CHECKPOINT          log p(x) sandwiched by forward and reverse AIS on simulated data
"""
import argparse
import sys
from typing import List, Optional

from .cli_model import add_model_commands
from .cli_train import add_train_command, config_from_args  # noqa: F401 (config_from_args: the flags' config)
from .data import DataError
from .training import TrainingDiverged
from .version import __version__
from .wording import cli_message


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-vae`` parser: ``--version`` and one subcommand per job."""
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders as Pyro programs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_command(sub)
    add_model_commands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``pyro-vae ARGV``; returns the exit status (1 with a one-line message for a bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args, argv)
    except (DataError, ValueError, FileNotFoundError, FileExistsError, TrainingDiverged) as e:
        print(f"pyro-vae {args.command}: error: {cli_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:   # outside the training loop (which saves and returns by itself)
        print(f"pyro-vae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
