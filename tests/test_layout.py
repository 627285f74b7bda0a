"""The package's shape: data flows one way (data_pipeline -> cf -> tokenizers -> trainer ->
methods), the shared loop imports no method, and no module imports itself in a circle.
Imports under `if TYPE_CHECKING:` are annotations, not dependencies, and are left out."""

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1] / "genrec"
LAYERS = ["data_pipeline", "cf", "tokenizers", "trainer", "methods"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """The genrec modules a file imports when it runs (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for guard in ast.walk(tree)
        if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
        for node in ast.walk(guard)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "genrec" or name.startswith("genrec.")}


def graph() -> nx.DiGraph:
    modules = {module_name(path): path for path in ROOT.rglob("*.py")}
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name)
        for target in runtime_imports(path):
            # `from genrec.x import y` depends on genrec.x (and on genrec.x.y if a module).
            if target in modules and target != name:
                g.add_edge(name, target)
    return g


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_module_imports_itself_in_a_circle():
    cycles = list(nx.simple_cycles(graph()))
    assert not cycles, f"import circles: {cycles[:5]}"


def test_data_flows_one_way_and_the_loop_knows_no_method():
    backwards = [
        (a, b)
        for a, b in graph().edges
        if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)
    ]
    assert not backwards, f"lower layers importing higher ones: {backwards}"


@pytest.mark.parametrize("package", ["trainer", "data_pipeline", "cf", "tokenizers"])
def test_shared_packages_import_nothing_from_methods(package):
    for path in (ROOT / package).rglob("*.py"):
        assert not any(m.startswith("genrec.methods") for m in runtime_imports(path)), path


LOOP = ["train.py", "hooks.py", "evaluate.py", "objective.py", "state.py", "engine.py"]
METHOD_WORDS = ("mtgrec", "etegrec", "tokenrec", "letter", "curriculum", "joint", "end_to_end")


@pytest.mark.parametrize("file", LOOP)
def test_the_shared_loop_names_no_method_in_its_code(file):
    """The loop reaches a method's parts only through the hooks: no name or attribute in its
    code is a method's (docstrings may mention them)."""
    tree = ast.parse((ROOT / "trainer" / file).read_text())
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    named = sorted(n for n in names if any(word in n.lower() for word in METHOD_WORDS))
    assert not named, f"genrec/trainer/{file} names {named}"
