"""Every name the README and docs/*.md tell users to import from pyro_vae resolves: ``from pyro_vae... import X``
lines, dotted references ``pyro_vae.x.y``, and the class names of our parts the tables name in backticks."""
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# backticked names that look like one of our parts or objectives (Pyro's own, such as Trace_ELBO, resolve in pyro.infer)
PART = re.compile(r"`([A-Z]\w*(?:Prior|Likelihood|Encoder|Decoder|VAE|_ELBO))\b")


def resolve(dotted: str):
    """``pyro_vae.a.b.C`` -> the object: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)       # AttributeError: the docs name something that is not there
        return obj
    raise ImportError(dotted)


def referenced_names():
    found = set()
    for path in DOCS:
        text = path.read_text()
        imports = re.findall(r"from (pyro_vae(?:\.\w+)*) import \(([^)]*)\)", text)        # parenthesized
        imports += re.findall(r"from (pyro_vae(?:\.\w+)*) import ([\w, ]+)$", text, flags=re.M)
        for module, names in imports:
            found.update((path.name, f"{module}.{n.strip()}") for n in names.split(",") if n.strip())
        # dotted references in prose and code, not file paths (pyro_vae/examples/) or module:Class specs' tails
        found.update((path.name, m) for m in re.findall(r"(?<![\w/])pyro_vae(?:\.[A-Za-z_]\w*)+", text))
    return sorted(found)


@pytest.mark.parametrize("where, dotted", referenced_names())
def test_every_documented_pyro_vae_name_resolves(where, dotted):
    try:
        resolve(dotted)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{where} names {dotted}, which does not resolve: {e}")


def test_documented_part_names_import_from_the_package():
    import pyro.infer
    import pyro_vae
    import pyro_vae.examples
    homes = (pyro_vae, pyro_vae.examples, pyro.infer)     # the worked examples import from pyro_vae.examples
    declared = {name for path in DOCS for name in re.findall(r"^class (\w+)", path.read_text(), flags=re.M)}
    missing = sorted({(path.name, name) for path in DOCS for name in PART.findall(path.read_text())
                      if name not in declared and not any(hasattr(home, name) for home in homes)})
    assert not missing, f"named in the docs but not importable from pyro_vae: {missing}"


def test_the_scan_finds_what_it_should():
    """The scan itself: the README's imports and the priors its table names are found (else the tests above
    would pass on nothing)."""
    names = {dotted for _, dotted in referenced_names()}
    assert {"pyro_vae.VAE", "pyro_vae.data.load_dataset", "pyro_vae.hooks.Hook"} <= names
    parts = set(PART.findall((ROOT / "README.md").read_text()))
    assert {"MixtureOfGaussiansPrior", "VampPrior", "IWAE_ELBO"} <= parts
