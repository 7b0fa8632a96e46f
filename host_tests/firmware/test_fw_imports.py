"""The firmware's modules import one way: no import circle (counting imports inside functions, which
the node uses to load a phase's code only when needed), and no module takes another's _private name,
neither by importing it nor as an attribute (`mqtt._close`, `Node._erase_and_reboot` in another file)."""

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


def private_attributes_used(path: Path) -> list[str]:
    """`x._name` in the file where `x` is bound by an import from rmnode: another module (`from rmnode import
    mqtt`, `import rmnode.mqtt`, with or without `as`) or something another module defines (`from
    rmnode.node import Node`). Dunder names are not private."""
    tree = ast.parse(path.read_text())
    modules, things = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rmnode":
            for alias in node.names:
                is_module = node.module == "rmnode" and (PACKAGE / f"{alias.name}.py").exists()
                (modules if is_module else things).add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "rmnode":
                    modules.add(alias.asname or "rmnode")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name) and owner.value.id == "rmnode":
                found.append(f"rmnode.{owner.attr}.{node.attr}")  # import rmnode.x; rmnode.x._y
            elif isinstance(owner, ast.Name) and owner.id in modules | things:
                found.append(f"{owner.id}.{node.attr}")
    return found


def graph() -> dict[str, set[str]]:
    return {path.stem: {module for module, _ in imports_of(path) if module not in ("__init__", path.stem)}
            for path in PACKAGE.glob("*.py")}


def test_no_module_imports_a_private_name_of_another():
    private = [(path.name, module, name) for path in PACKAGE.glob("*.py") for module, name in imports_of(path)
               if name.startswith("_") and module != "__init__"]
    assert private == []


def test_no_module_uses_a_private_attribute_of_another():
    used = {path.name: private_attributes_used(path) for path in PACKAGE.glob("*.py")}
    assert {name: names for name, names in used.items() if names} == {}


def test_the_private_attribute_check_sees_what_it_should(tmp_path):
    # a guard for the test above
    sample = tmp_path / "sample.py"
    sample.write_text("from rmnode import mqtt as m\nimport rmnode.online_reports\nfrom rmnode.node import Node\n"
                      "m._close(); rmnode.online_reports._TAG; Node._erase_and_reboot; m.__name__; self._ok\n")
    assert sorted(private_attributes_used(sample)) == ["Node._erase_and_reboot", "m._close", "rmnode.online_reports._TAG"]


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
    assert {"prov_phase", "online_phase", "credentials"} <= edges["node"]
    assert "mqtt" in edges["clock"] and {"log", "mapping", "wifi"} <= edges["prov_endpoints"]
