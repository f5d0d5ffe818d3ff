"""A griffe extension (mkdocs.yml: the python handler's ``extensions``) for what our docstrings write in Sphinx's
idiom, which Markdown would print raw or griffe's Google parser would misread:

* ``text::`` before an indented block (reST's literal-block marker) becomes ``text:`` (the block stays code);
* an entry documenting several parameters at once (``model, guide: ...`` under ``Args:``) becomes one entry per
  name with the same description, so each gets its own type and default;
* Sphinx roles: see below.

Each role becomes a link to the API reference where its target is rendered there (a public object with a
docstring, in a module an API page renders: mkdocs-autorefs resolves it), and code otherwise (a private helper,
Pyro's or torch's names). A role naming a ``pyro_vae`` object that does not exist is a broken reference: the
build fails, naming the docstring.
"""
import re
from pathlib import Path

import griffe

SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes|Keyword Args|Other Parameters):\s*$")
GROUPED = re.compile(r"^(\s+)(\w+(?:\s*,\s*\w+)+)(\s*(?:\([^)]*\))?:\s.*)$")
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


def split_grouped(text: str) -> str:
    """``a, b: description`` entries of Args/Attributes sections -> one entry per name (description repeated)."""
    lines, out, i = text.splitlines(), [], 0
    section_indent = None
    while i < len(lines):
        line = lines[i]
        header = SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
            out.append(line)
            i += 1
            continue
        if section_indent is not None and line.strip() and len(line) - len(line.lstrip()) <= section_indent:
            section_indent = None                   # dedented: the section is over
        grouped = GROUPED.match(line) if section_indent is not None else None
        if grouped:
            indent = grouped.group(1)
            body = [lines[j] for j in range(i + 1, len(lines))]
            more = []
            for follow in body:                       # continuation lines are indented deeper
                if follow.strip() and len(follow) - len(follow.lstrip()) > len(indent):
                    more.append(follow)
                else:
                    break
            for name in re.split(r"\s*,\s*", grouped.group(2)):
                out.append(indent + name + grouped.group(3))
                out.extend(more)
            i += 1 + len(more)
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def literal_markers(text: str) -> str:
    """reST ``text::`` / a lone ``::`` before an indented block -> ``text:`` / nothing."""
    text = re.sub(r"^[ \t]*::[ \t]*\n", "", text, flags=re.M)
    return re.sub(r"(\S)[ \t]*::[ \t]*$", r"\1:", text, flags=re.M)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg, **kwargs):
        if pkg.name != "pyro_vae":
            return
        broken = []

        def visit(obj):
            if obj.is_alias:
                return
            if obj.docstring:
                value = split_grouped(literal_markers(obj.docstring.value))
                obj.docstring.value = ROLE.sub(lambda m: self._replace(pkg, obj, m, broken), value)
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
