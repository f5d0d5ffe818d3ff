"""The import direction of docs/architecture.md holds: every import inside pyro_vae (at module level or in a
function) goes to a module of an earlier layer, so there is no cycle and the picture in the docs is the code's."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pyro_vae"


def layers():
    block = re.search(r"```text\nlayer +name +modules\n(.*?)```", (ROOT / "docs" / "architecture.md").read_text(),
                      flags=re.S).group(1)
    rank = {}
    for line in block.strip().splitlines():
        number, rest = line.split(maxsplit=1)
        # the name column is words up to two spaces; the modules follow it
        modules = re.split(r"\s{2,}", rest.strip())[-1].split()
        for module in modules:
            rank[module] = int(number)
    return rank


def top_module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports(path: Path):
    """The pyro_vae modules ``path`` imports (first component under the package), with line numbers."""
    tree = ast.parse(path.read_text())
    inside = path.relative_to(PACKAGE).parts[:-1]           # () for pyro_vae/x.py, ("examples",) for examples/
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(inside[:len(inside) - node.level + 1])
            names = [node.module] if node.module else [a.name for a in node.names]
            for name in names:
                target = (base + name.split("."))[0] if base or name else None
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pyro_vae."):
                    yield node.lineno, alias.name.split(".")[1]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro_vae"):
            rest = node.module.split(".")[1:]
            for alias in node.names if not rest else [None]:
                yield node.lineno, rest[0] if rest else alias.name


def test_every_module_is_in_a_layer():
    rank = layers()
    modules = {top_module(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert modules == set(rank), (sorted(modules - set(rank)), sorted(set(rank) - modules))


def test_imports_go_to_earlier_layers_only():
    rank = layers()
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = top_module(path)
        if module == "__init__":              # the package's front door re-exports every layer
            continue
        for line, target in imports(path):
            if target is None or target == module:
                continue                      # within one module (the examples package's own files)
            if target not in rank or rank[target] >= rank[module]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({module}, layer {rank[module]}) imports {target} "
                             f"(layer {rank.get(target)})")
    assert not wrong, "\n".join(wrong)
