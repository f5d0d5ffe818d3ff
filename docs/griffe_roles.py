"""A griffe extension (mkdocs.yml: the python handler's ``extensions``): our docstrings cross-reference in Sphinx
roles (:class:`~pyro_vae.priors.Prior`, :meth:`Trainer.fit`), which Markdown would print raw.

Each role becomes a link to the API reference where its target is rendered there (a public object with a
docstring, in a module an API page renders: mkdocs-autorefs resolves it), and code otherwise (a private helper,
Pyro's or torch's names). A role naming a ``pyro_vae`` object that does not exist is a broken reference: the
build fails, naming the docstring.
"""
import re
from pathlib import Path

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([\w.]+)`")
DOCS = Path(__file__).resolve().parent
RENDERED = {m for page in (DOCS / "api").glob("*.md")
            for m in re.findall(r"^::: (pyro_vae(?:\.\w+)*)\s*$", page.read_text(), flags=re.M)}


def _lookup(pkg, path):
    try:
        return pkg[path[len(pkg.name) + 1:]] if path != pkg.name else pkg
    except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _rendered(obj) -> bool:
    """Whether the API reference shows ``obj`` (mkdocstrings hides private and undocumented members)."""
    node = obj
    while node is not None and not node.is_module:
        if node.name.startswith("_") and node.name != "__init__" or not node.docstring:
            return False
        node = node.parent
    return node is not None and node.path in RENDERED and (obj.is_module or bool(obj.docstring))


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg, **kwargs):
        if pkg.name != "pyro_vae":
            return
        broken = []

        def visit(obj):
            if obj.is_alias:
                return
            if obj.docstring:
                obj.docstring.value = ROLE.sub(lambda m: self._replace(pkg, obj, m, broken), obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
        if broken:
            raise ValueError("docstrings name pyro_vae objects that do not exist: " + "; ".join(broken))

    @staticmethod
    def _replace(pkg, obj, match, broken):
        short, name = match.group(1), match.group(2)
        shown = name.rsplit(".", 1)[-1] if short else name
        target = None
        if name.startswith("pyro_vae"):
            target = _lookup(pkg, name)
            if target is None:
                broken.append(f"{obj.path}: {match.group(0)}")
        else:       # relative to the object's module, then its class
            module = obj if obj.is_module else obj.module
            for scope in filter(None, (module, obj.parent if obj.is_function else obj)):
                target = target or _lookup(pkg, f"{scope.path}.{name}")
        if target is not None:
            try:
                target = target.final_target if target.is_alias else target
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                return f"`{shown}`"
            if target.path.startswith("pyro_vae") and _rendered(target):
                return f"[`{shown}`][{target.path}]"
        return f"`{shown}`"
