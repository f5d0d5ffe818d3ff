"""The docs site (mkdocs.yml, docs/): what `mkdocs build --strict` cannot check by itself.

mkdocstrings silently leaves out a public name that has no docstring, and a module that no API page names is
simply absent; these tests fail instead. The full strict build runs once in .ci/run (`make docs`), outside pytest.
"""
import ast
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

import pyro_vae

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS = (ROOT / "mkdocs.yml").read_text()


def exported_names():
    """The names pyro_vae/__init__.py imports from its modules (and __all__, where it has one)."""
    tree = ast.parse((ROOT / "pyro_vae" / "__init__.py").read_text())
    names = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1
             for alias in node.names}
    return sorted(names | set(getattr(pyro_vae, "__all__", ())))


def public_modules():
    """The modules pyro_vae/__init__.py imports its names from: each needs an API page."""
    tree = ast.parse((ROOT / "pyro_vae" / "__init__.py").read_text())
    return sorted({f"pyro_vae.{node.module}" for node in tree.body if isinstance(node, ast.ImportFrom)
                   and node.level == 1 and node.module})


def documented_modules():
    """``::: pyro_vae.x`` directives on the API pages that mkdocs.yml's nav lists."""
    pages = re.findall(r"^\s*-\s*[^:\n]+:\s*(api/\S+\.md)\s*$", MKDOCS, flags=re.M)
    assert pages, "mkdocs.yml's nav lists no api/*.md page"
    found = {}
    for page in pages:
        path = DOCS / page
        assert path.exists(), f"mkdocs.yml's nav lists {page}, which is not in docs/"
        for module in re.findall(r"^::: (pyro_vae(?:\.\w+)*)\s*$", path.read_text(), flags=re.M):
            found[module] = page
    return found


@pytest.mark.parametrize("name", [n for n in exported_names() if not n.startswith("__")])
def test_every_exported_name_has_a_docstring(name):
    obj = getattr(pyro_vae, name)
    assert inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj), \
        f"pyro_vae.{name} is a {type(obj).__name__}: the API reference renders classes and functions only"
    doc = obj.__doc__          # a class's own docstring: __doc__ is not inherited from its bases
    assert doc and doc.strip(), (f"pyro_vae.{name} ({obj.__module__}) has no docstring: the API reference would "
                                 f"leave it out; write one")


def test_the_api_pages_cover_every_public_module():
    documented = documented_modules()
    missing = [m for m in public_modules() if m not in documented]
    assert not missing, f"public modules with no `::: module` line on an API page listed in mkdocs.yml: {missing}"
    for module in documented:
        importlib.import_module(module)        # a page naming a module that is not there


def test_every_exported_name_is_defined_in_a_documented_module():
    documented = documented_modules()
    for name in exported_names():
        obj = getattr(pyro_vae, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ in documented, \
                f"pyro_vae.{name} is defined in {obj.__module__}, which no API page renders"


def test_included_readme_sections_exist():
    """The tutorial pages include README.md between headings: a renamed heading must fail here, by name."""
    for page in sorted(DOCS.rglob("*.md")):
        for target, rest in re.findall(r'\{%\s*include-markdown\s+"([^"]+)"([^%]*)%\}', page.read_text()):
            source = (page.parent / target).resolve()
            assert source.exists(), f"{page.relative_to(ROOT)} includes {target}, which does not exist"
            text = source.read_text()
            for key, marker in re.findall(r'(start|end)="([^"]+)"', rest):
                assert marker in text, f"{page.relative_to(ROOT)}: {key} marker {marker!r} is not in {target}"


def test_cli_reference_renders_every_subcommand():
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') is not installed")
    hooks = load_docs_module("hooks")
    text = hooks.cli_reference()
    import argparse
    from pyro_vae.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"train", "sample", "reconstruct", "evaluate", "bdmc"} <= set(sub.choices)
    for name, parser in sub.choices.items():
        assert f"### pyro-vae {name}\n" in text, f"the CLI reference has no section for pyro-vae {name}"
        for action in parser._actions:      # every flag of every subcommand
            for flag in action.option_strings:
                assert flag in text, f"the CLI reference does not show pyro-vae {name} {flag}"


def load_docs_module(name):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grouped_parameters_become_one_entry_each():
    pytest.importorskip("griffe", reason="the docs extra (pip install -e '.[docs]') is not installed")
    roles = load_docs_module("griffe_roles")
    doc = ("Run it::\n\n    code here\n\nArgs:\n    model, guide: any Pyro programs\n        on the contract.\n"
           "    x: the data.\n\nReturns:\n    a, b: not a parameter list.")
    out = roles.split_grouped(roles.literal_markers(doc))
    assert "Run it:\n\n    code here" in out
    assert "    model: any Pyro programs\n        on the contract.\n    guide: any Pyro programs\n        on the contract." in out
    assert "    x: the data." in out and "    a, b: not a parameter list." in out     # outside Args: untouched


def test_a_role_naming_a_missing_object_fails_the_build():
    griffe = pytest.importorskip("griffe", reason="the docs extra (pip install -e '.[docs]') is not installed")
    roles = load_docs_module("griffe_roles")
    pkg = griffe.load("pyro_vae", search_paths=[str(ROOT)])
    pkg["vae.VAE"].docstring.value += "\n\nSee :class:`~pyro_vae.priors.Prior` and :meth:`sample`."
    roles.SphinxRoles().on_package(pkg=pkg)
    value = pkg["vae.VAE"].docstring.value
    assert "[`Prior`][pyro_vae.priors.Prior]" in value and "[`sample`][pyro_vae.vae.VAE.sample]" in value
    pkg["vae.VAE"].docstring.value += "\n\nSee :func:`pyro_vae.priors.no_such_prior`."
    with pytest.raises(ValueError, match="no_such_prior"):
        roles.SphinxRoles().on_package(pkg=pkg)


def test_site_pages_hold_no_untested_code():
    """Code on the site comes from README.md (run by test_readme.py) or docs/declaring_models.md (run by
    test_examples.py), included in place; a python block written into another page would run nowhere."""
    tested = {"declaring_models.md"}
    for page in sorted(DOCS.rglob("*.md")):
        if page.name not in tested:
            assert "```python" not in page.read_text(), \
                f"{page.relative_to(ROOT)} has its own python block: include it from README.md, or test it"


def test_the_maths_becomes_mathml_at_build_time_with_no_script():
    """The site's maths needs no CDN: docs/hooks.py turns arithmatex's TeX into MathML, refuses TeX whose
    alignment latex2mathml would print as text, and mkdocs.yml loads no remote script."""
    pytest.importorskip("latex2mathml", reason="the docs extra (pip install -e '.[docs]') is not installed")
    mkdocs = pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') is not installed")
    from types import SimpleNamespace
    hooks = load_docs_module("hooks")
    page = SimpleNamespace(file=SimpleNamespace(src_path="concepts.md"))
    html = ('<p>With <span class="arithmatex">\\(K &lt; 2\\)</span> draws:</p>'
            '<div class="arithmatex">\\[\\begin{split} a &amp;= b \\\\ &amp;\\le c \\end{split}\\]</div>')
    out = hooks.on_page_content(html, page, None, None)
    assert "arithmatex" not in out and out.count("<math") == 2
    assert 'display="inline"' in out and 'display="block"' in out and "<mtable" in out and "&#x0003C;" in out
    with pytest.raises(mkdocs.exceptions.PluginError, match="concepts.md.*split or align"):
        hooks.on_page_content('<div class="arithmatex">\\[\\begin{aligned} a &amp;= b \\end{aligned}\\]</div>',
                              page, None, None)
    config = (ROOT / "mkdocs.yml").read_text()
    assert "mathjax" not in config.lower() and "extra_javascript" not in config
