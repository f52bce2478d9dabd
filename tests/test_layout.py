"""The package's structure: no import cycle anywhere, and imports run down the layers only.

Every ``import`` statement counts, also those inside functions (deferred imports still make
a cycle). The layers are DESIGN.md's: cli -> commands -> pretrain / transfer / embed /
infer -> methods, export -> losses, views, data, models, config; below them the
foundations every layer may use (errors, io, paths, checkpointing, run info, the console,
the progress display and the look of reports).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import domainssl

PACKAGE = Path(domainssl.__file__).parent
LAYERS = [
    {
        "errors",
        "io",
        "paths",
        "checkpointing",
        "runinfo",
        "console",
        "progress",
        "reports",
        "__init__",
    },
    {"losses", "views", "data", "models", "config"},
    {"methods", "export"},
    {"pretrain", "run_report", "transfer", "embed", "infer"},
    {"commands"},
    {"cli", "__main__"},
]
"""Lowest first: a module may import its own layer and those below, never one above."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """The domainssl modules ``path`` imports anywhere in its body (``from a import b``
    counts as ``a.b`` when ``b`` is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    matches = [rank for rank, layer in enumerate(LAYERS) if top in layer]
    assert matches, f"{module} belongs to no layer: add {top!r} to LAYERS (and DESIGN.md)"
    return matches[0]


def test_the_import_parser_sees_deferred_imports_and_submodules() -> None:
    commands = GRAPH["domainssl.commands.pretrain"]
    assert "domainssl.pretrain" in commands  # imported inside the command function
    assert "domainssl.methods.orl.module" in GRAPH["domainssl.methods.orl"]


def test_the_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    assert find_cycle(GRAPH) is None


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
        for source, targets in GRAPH.items()
        for target in targets
        if layer_of(target) > layer_of(source)
    ]
    assert upward == []


RUN_ONLY_MODULES = [
    "domainssl.commands.embed",
    "domainssl.commands.infer",
    "domainssl.embed.archive",
    "domainssl.embed.chips",
    "domainssl.embed.claims",
    "domainssl.embed.compute",
    "domainssl.embed.encoder",
    "domainssl.embed.items",
    "domainssl.embed.manifest",
    "domainssl.embed.scenes",
    "domainssl.embed.slides",
    "domainssl.infer.geotiff.infer",
    "domainssl.infer.wsi.infer",
    "domainssl.models.parallel",
]
"""What `domainssl embed` and `domainssl infer` load, also inside their functions."""


def test_embed_and_infer_load_without_the_training_libraries() -> None:
    """The commands that only run a model start without Lightning and scikit-learn (about
    2 s of imports on 2 cores): a model loader that pulls in training code fails this."""
    script = (
        f"import importlib, sys; [importlib.import_module(m) for m in {RUN_ONLY_MODULES!r}]; "
        "print(' '.join(m for m in ('lightning', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.split() == []
