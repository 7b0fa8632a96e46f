"""The firmware's modules import one way: no import circle (counting imports inside functions, which
the node uses to load a phase's code only when needed), and no module takes another's _private name."""

import ast
from pathlib import Path

from support.paths import FIRMWARE

PACKAGE = FIRMWARE / "rmnode"


def imports_of(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from rmnode[.x] import name` and `import rmnode.x` in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rmnode":
            for alias in node.names:
                if node.module == "rmnode":  # `from rmnode import log`: the module log (or a package value)
                    target = alias.name if (PACKAGE / f"{alias.name}.py").exists() else "__init__"
                    found.append((target, alias.name))
                else:
                    found.append((node.module.split(".", 1)[1], alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rmnode."):
                    found.append((alias.name.split(".", 1)[1], "*"))
    return found


def graph() -> dict[str, set[str]]:
    return {path.stem: {module for module, _ in imports_of(path) if module not in ("__init__", path.stem)}
            for path in PACKAGE.glob("*.py")}


def test_no_module_imports_a_private_name_of_another():
    private = [(path.name, module, name) for path in PACKAGE.glob("*.py") for module, name in imports_of(path)
               if name.startswith("_") and module != "__init__"]
    assert private == []


def test_there_is_no_import_circle():
    edges = graph()
    cycles = []

    def visit(module, trail):
        for target in sorted(edges.get(module, ())):
            if target in trail:
                cycles.append(trail[trail.index(target):] + [target])
            elif len(trail) < len(edges):
                visit(target, trail + [target])

    for module in sorted(edges):
        visit(module, [module])
    assert cycles == []


def test_the_graph_is_read_as_expected():
    # a guard for the two tests above: they see the lazy imports too
    edges = graph()
    assert {"node_prov", "node_online", "credentials"} <= edges["node"]
    assert "mqtt" in edges["clock"] and {"log", "mapping", "wifi"} <= edges["prov"]
