"""The README is the front door: its Python snippets run as shown, and its commands parse."""
import re
import shlex
from pathlib import Path

import pytest

from pyro_vae.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands(prefix):
    """Shell commands starting with ``prefix`` in the bash blocks (continuation lines joined)."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith(prefix):
                found.append(line)
    return found


def test_readme_has_the_front_door_pieces():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    assert len(blocks("python")) >= 2
    assert commands("pyro-vae train")


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)   # snippets write runs/...: keep them out of the repo
    exec(compile(blocks("python")[index], f"README.md python block {index}", "exec"), {})
    printed = capsys.readouterr().out
    value = float(re.search(r"(-?\d+\.\d+)(?: ± \d+\.\d+)? nats", printed).group(1))
    if "validation ELBO" in printed:
        # digits, trained a little: untrained about -45.5, one epoch about -34, convergence about -23
        assert -38 < value < -20, printed
    else:
        # the factor-analysis snippet: exact log p(x) of its data under the true W is about -6.2
        assert -7.5 < value < -5.5, printed


@pytest.mark.parametrize("line", commands("pyro-vae"))
def test_cli_commands_in_readme_parse(line):
    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
    assert ".ci/wheel" in ci and (README.parent / ".ci" / "wheel").stat().st_mode & 0o111   # the wheel step runs
    makefile = (README.parent / "Makefile").read_text()
    assert "pip install -e '.[test]'" in makefile and "-m pytest" in makefile
