"""The house rules, read from the source: layers point down, no import cycles, small modules, real types.

The import graph is built from the source by ``ast`` (nothing is imported), at module granularity:

- every ``import`` / ``from ... import`` anywhere in a module counts: module level, inside functions and
  methods, and inside ``if TYPE_CHECKING:`` blocks. A TYPE_CHECKING import must not point up a layer either,
  but it never runs, so it is left out of the cycle check;
- ``import vqa_cli.a.b`` is an edge to ``vqa_cli.a.b``; ``from vqa_cli.a import b`` is an edge to the
  submodule ``vqa_cli.a.b`` when ``b`` is one, else to ``vqa_cli.a`` itself (relative imports likewise);
- a package is a node of its own, its ``__init__``: ``from vqa_cli.video import probe`` is an edge to
  ``vqa_cli.video``, and the package's own imports (its re-exports, lazy ones in ``__getattr__`` included)
  are edges from it to its submodules. So a module inside ``video/`` that imports a name through the
  package, while the package re-exports from that module, is a cycle. Importing a submodule is not counted
  as importing its parent package (Python runs the parent's ``__init__`` first, but that is the package's
  own, acyclic business as long as the package's edges are acyclic);
- ``importlib.import_module`` of vqa_cli must name its module as a string literal; any other dynamic import
  of vqa_cli is an offence, since this test could not see it.

Every module belongs to a layer by its path (``LAYERS``); an import may point to its own layer or a lower
one. ``vqa_cli/__init__`` (the version), ``__main__`` and ``testing`` are outside the layers: nothing in
the layers may import ``__main__`` or ``testing``, and ``vqa_cli/__init__`` imports nothing of vqa_cli.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "vqa_cli"

# Bottom to top. A module's layer is that of the longest prefix of its dotted name found here.
LAYERS = {
    "vqa_cli.errors": 0,
    "vqa_cli.settings": 0,
    "vqa_cli.wire": 0,
    "vqa_cli.atomic": 0,
    "vqa_cli.fingerprint": 0,
    "vqa_cli.units": 0,
    "vqa_cli.console": 0,
    "vqa_cli.video": 1,
    "vqa_cli.model": 2,
    "vqa_cli.output": 3,
    "vqa_cli.remote": 4,
    "vqa_cli.jobs": 5,
    "vqa_cli.serve": 6,
    "vqa_cli.cli": 7,
}
# Outside the layers: `python -m vqa_cli` and test support (with their submodules), which no module in a layer may
# import, and the package itself (its version), which imports nothing of vqa's.
NEVER_IMPORTED = ("vqa_cli.__main__", "vqa_cli.testing")
ROOT_PACKAGE = "vqa_cli"

MAX_LINES = 400
MAX_PUBLIC_ANY = 20
BARE_ANY = {"Any", "Any | None", "None | Any", "Optional[Any]", "typing.Any", "typing.Any | None"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: Path
    line: int
    type_checking: bool

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (a package's node is its ``__init__``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _known(name: str, mods: dict[str, Path]) -> str | None:
    """The module a dotted name lands in: itself, or its nearest enclosing module of the tree."""
    while name not in mods and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in mods else None


def _type_checking_test(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import statements inside ``if TYPE_CHECKING:`` bodies (not their ``else``)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_test(node.test):
            for statement in node.body:
                inside.update(id(child) for child in ast.walk(statement))
    return inside


def import_edges(root: Path) -> tuple[dict[str, Path], list[Edge], list[str]]:
    """Every import of the tree's own modules, and the dynamic imports the graph cannot follow."""
    mods = modules(root)
    package = root.name
    edges: list[Edge] = []
    unseen: list[str] = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        hidden = _type_checking_nodes(tree)

        def add(target: str | None, node: ast.AST, name: str = name, path: Path = path, hidden: set = hidden) -> None:
            if target is not None and target != name:
                edges.append(Edge(name, target, path, node.lineno, id(node) in hidden))

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        add(_known(alias.name, mods), node)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                if origin != package and not origin.startswith(package + "."):
                    continue
                for alias in node.names:
                    submodule = f"{origin}.{alias.name}"
                    add(submodule if submodule in mods else _known(origin, mods), node)
            elif isinstance(node, ast.Call) and _is_import_module(node.func):
                argument = node.args[0] if node.args else None
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    if argument.value == package or argument.value.startswith(package + "."):
                        add(_known(argument.value, mods), node)
                else:
                    unseen.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}")
    return mods, edges, unseen


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id in {"import_module", "__import__"}) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )


def never_imported(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in NEVER_IMPORTED)


def outside(name: str) -> bool:
    return name == ROOT_PACKAGE or never_imported(name)


def layer_of(name: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def cycles(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def upward_imports(edges: list[Edge]) -> list[Edge]:
    wrong = []
    for edge in edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if never_imported(edge.target) and not outside(edge.source):
            wrong.append(edge)
        elif source is not None and target is not None and target > source:
            wrong.append(edge)
    return wrong


def cycle_report(found: list[list[str]], edges: list[Edge], root: Path) -> list[str]:
    """Each cycle with the imports that close it (those between its members), so a reader sees what to cut."""
    lines = []
    for members in found:
        inside = set(members)
        lines.append(f"cycle of {len(members)}: {', '.join(members)}")
        closing = {(e.source, e.target, e.where(root)) for e in edges if e.source in inside and e.target in inside}
        lines += [f"    {where}: {source} -> {target}" for source, target, where in sorted(closing)]
    return lines


def public_any(root: Path) -> list[str]:
    """Parameters, returns and class fields annotated exactly ``Any`` (or ``Any | None``) on public names.

    Public: a module-level function or class, or a method or field of a public class, whose name does not
    start with ``_``; functions nested inside functions are not public. Test support (``testing``) is left out.
    """
    hits = []

    def bare(annotation: ast.expr | None) -> bool:
        if annotation is None:
            return False
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            return annotation.value.strip() in BARE_ANY
        return ast.unparse(annotation) in BARE_ANY

    def visit(body: list[ast.stmt], where: str, owner: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                arguments = node.args
                every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
                every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
                for argument in every:
                    if bare(argument.annotation):
                        hits.append(f"{where}:{node.lineno}: {owner}{node.name}({argument.arg}: Any)")
                if bare(node.returns):
                    hits.append(f"{where}:{node.lineno}: {owner}{node.name}() -> Any")
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for statement in node.body:
                    if (
                        isinstance(statement, ast.AnnAssign)
                        and isinstance(statement.target, ast.Name)
                        and not statement.target.id.startswith("_")
                        and bare(statement.annotation)
                    ):
                        hits.append(f"{where}:{statement.lineno}: {owner}{node.name}.{statement.target.id}: Any")
                visit(node.body, where, f"{owner}{node.name}.")

    for name, path in modules(root).items():
        if name == "vqa_cli.testing" or name.startswith("vqa_cli.testing."):  # test support
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        visit(tree.body, str(path.relative_to(root.parent)), "")
    return hits


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Edge], list[str]]:
    return import_edges(ROOT)


def test_every_module_has_a_layer(graph):
    mods, _, _ = graph
    homeless = sorted(name for name in mods if not outside(name) and layer_of(name) is None)
    assert not homeless, "modules in no layer (add them to LAYERS in tests/test_layers.py): " + ", ".join(homeless)


def test_no_import_points_up_a_layer(graph):
    _, edges, _ = graph
    wrong = upward_imports(edges)
    lines = [
        f"{e.where(ROOT)}: {e.source} (layer {layer_of(e.source)}) -> {e.target} (layer {layer_of(e.target)})"
        + (" [TYPE_CHECKING]" if e.type_checking else "")
        for e in sorted(wrong, key=lambda e: (str(e.path), e.line))
    ]
    assert not wrong, f"{len(wrong)} imports point up a layer:\n" + "\n".join(lines)


def test_the_package_itself_imports_nothing_of_vqa(graph):
    _, edges, _ = graph
    wrong = [f"{e.where(ROOT)}: vqa_cli -> {e.target}" for e in edges if e.source == "vqa_cli"]
    assert not wrong, "vqa_cli/__init__.py must stay below every layer:\n" + "\n".join(wrong)


def test_no_dynamic_imports_the_graph_cannot_see(graph):
    _, _, unseen = graph
    assert not unseen, "import vqa_cli modules by a literal name (or an import statement):\n" + "\n".join(unseen)


def test_no_import_cycles(graph):
    mods, edges, _ = graph
    running = [e for e in edges if not e.type_checking]
    found = cycles(sorted(mods), running)
    assert not found, f"{len(found)} import cycles:\n" + "\n".join(cycle_report(found, running, ROOT))


def test_every_module_is_at_most_400_lines():
    long = []
    for path in modules(ROOT).values():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_LINES:
            long.append(f"{path.relative_to(ROOT.parent)}: {count} lines")
    assert not long, f"{len(long)} modules over {MAX_LINES} lines (split them by concept):\n" + "\n".join(long)


def test_public_bare_any_annotations_are_few():
    hits = public_any(ROOT)
    assert len(hits) <= MAX_PUBLIC_ANY, (
        f"{len(hits)} public bare `Any` annotations (at most {MAX_PUBLIC_ANY}); use real types:\n" + "\n".join(hits)
    )


# The graph builder itself, on small trees written here: each rule must see what it claims to see.


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "vqa_cli"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return root


def test_a_package_import_inside_the_package_that_closes_a_loop_is_a_cycle(tmp_path):
    root = _tree(
        tmp_path,
        {
            "video/__init__.py": "from vqa_cli.video._a import probe\n",
            "video/_a.py": "def probe():\n    from vqa_cli.video import helper\n",
            "video/_b.py": "helper = 1\n",
        },
    )
    mods, edges, _ = import_edges(root)
    assert cycles(sorted(mods), edges) == [["vqa_cli.video", "vqa_cli.video._a"]]


def test_a_submodule_named_in_from_import_is_an_edge_to_that_submodule(tmp_path):
    root = _tree(
        tmp_path,
        {
            "video/__init__.py": "from vqa_cli.video._a import probe\n",
            "video/_a.py": "from vqa_cli.video import _b\nfrom . import _c\n",
            "video/_b.py": "",
            "video/_c.py": "",
        },
    )
    mods, edges, _ = import_edges(root)
    assert {(e.source, e.target) for e in edges} == {
        ("vqa_cli.video", "vqa_cli.video._a"),
        ("vqa_cli.video._a", "vqa_cli.video._b"),
        ("vqa_cli.video._a", "vqa_cli.video._c"),
    }
    assert cycles(sorted(mods), edges) == []


def test_type_checking_imports_count_for_layers_but_not_for_cycles(tmp_path):
    root = _tree(
        tmp_path,
        {
            "video/_a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vqa_cli.model.x import Y\n",
            "model/x.py": "from vqa_cli.video._a import Z\n",
        },
    )
    mods, edges, _ = import_edges(root)
    assert [(e.source, e.target, e.type_checking) for e in upward_imports(edges)] == [
        ("vqa_cli.video._a", "vqa_cli.model.x", True)
    ]
    assert cycles(sorted(mods), [e for e in edges if not e.type_checking]) == []
    assert cycles(sorted(mods), edges) == [["vqa_cli.model.x", "vqa_cli.video._a"]]


def test_function_level_and_relative_imports_are_edges_and_testing_is_never_imported(tmp_path):
    root = _tree(
        tmp_path,
        {
            "errors.py": "def f():\n    from .cli import main\n",
            "output/records.py": "def g():\n    import vqa_cli.testing\n",
            "output/sheet.py": "from vqa_cli.testing.clips import make_clip\n",
            "testing/__init__.py": "from vqa_cli.testing.clips import make_clip\nfrom vqa_cli.cli import main\n",
            "testing/clips.py": "make_clip = 1\n",
            "cli/__init__.py": "main = 1\n",
        },
    )
    mods, edges, _ = import_edges(root)
    assert sorted((e.source, e.target) for e in upward_imports(edges)) == [
        ("vqa_cli.errors", "vqa_cli.cli"),
        ("vqa_cli.output.records", "vqa_cli.testing"),
        ("vqa_cli.output.sheet", "vqa_cli.testing.clips"),
    ]
    assert not [name for name in mods if not outside(name) and layer_of(name) is None]


def test_dynamic_imports_by_a_computed_name_are_reported(tmp_path):
    root = _tree(
        tmp_path,
        {
            "video/__init__.py": (
                "from importlib import import_module\n"
                "def __getattr__(name):\n"
                "    import_module('vqa_cli.video._a')\n"
                "    return import_module(f'vqa_cli.video.{name}')\n"
            ),
            "video/_a.py": "",
        },
    )
    _, edges, unseen = import_edges(root)
    assert [(e.source, e.target) for e in edges] == [("vqa_cli.video", "vqa_cli.video._a")]
    assert len(unseen) == 1 and "video/__init__.py:4" in unseen[0]


def test_public_any_counts_parameters_returns_and_fields_of_public_names_only(tmp_path):
    root = _tree(
        tmp_path,
        {
            "m.py": (
                "from typing import Any\n"
                "def f(a: Any, b: int, *c: Any, d: Any | None = None) -> Any: ...\n"
                "def _g(a: Any) -> Any: ...\n"
                "class C:\n"
                "    x: Any\n"
                "    y: list[Any]\n"
                "    _z: Any\n"
                "    def m(self, v: 'Any') -> None:\n"
                "        def inner(w: Any) -> Any: ...\n"
                "class _D:\n"
                "    x: Any\n"
                "    def m(self, v: Any) -> Any: ...\n"
            ),
            "testing.py": "from typing import Any\ndef h(a: Any) -> Any: ...\n",
        },
    )
    assert [hit.split(": ", 1)[1] for hit in public_any(root)] == [
        "f(a: Any)",
        "f(d: Any)",
        "f(c: Any)",
        "f() -> Any",
        "C.x: Any",
        "C.m(v: Any)",
    ]
