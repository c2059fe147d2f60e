"""The pack's import layering, checked from the source (no imports run): ``python tools/check_layers.py``.

Layers, lowest first; a module may import its own layer and the layers its rule lists, nothing else:

- floor: ``errors``, ``imaging``, ``hashing``, ``access``, ``hub_access``, ``model_folders``, ``precisions``,
  ``lazy_exports``;
- engines: ``retrieval`` and ``rendering`` stand on the floor and never import each other;
- ``tiny_models``: writes test models with the renderer's architecture table; engines never import it;
- adapters: ``nodes`` (ComfyUI) and ``cli`` never import each other.

Only ``nodes`` (and the package's ``__init__``) may import ComfyUI. Any circle of imports between the pack's modules
(deferred imports inside functions count: they are the same dependency, only later) is reported too.

Two rules keep each module's inside its own:

- ``nodes`` and ``cli`` import an engine only through its face (``retrieval/__init__.py``, ``rendering/__init__.py``),
  and only the names its ``__all__`` lists; ``tiny_models`` is exempt, since it writes model files with the
  renderer's own architecture tables;
- no module imports another module's private name (one starting with ``_``).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sketch_rag"
FLOOR = frozenset({"errors", "imaging", "hashing", "access", "hub_access", "model_folders", "precisions",
                   "lazy_exports"})
ALLOWED = {
    "floor": {"floor"},
    "retrieval": {"floor"},
    "rendering": {"floor"},
    "tiny_models": {"floor", "rendering"},
    "nodes": {"floor", "retrieval", "rendering"},
    "cli": {"floor", "retrieval", "rendering", "tiny_models"},
    "package": {"nodes"},
}
"""Layer -> the other layers it may import."""
COMFYUI_MODULES = frozenset({"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes",
                             "server", "execution", "node_helpers", "latent_preview", "comfyui_version"})
MAY_IMPORT_COMFYUI = frozenset({"nodes", "package"})
ENGINES = frozenset({"retrieval", "rendering"})
THROUGH_FACES = frozenset({"nodes", "cli"})
"""Layers that may import an engine only through its face."""
SKIPPED = ("tests", "bench", "tools", ".venv", ".comfyui", "build")


def pack_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name (without the package prefix) -> file, for every module of the pack."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in SKIPPED or parts[0].startswith("."):
            continue
        name = ".".join(parts)[: -len(".py")]
        modules[name.removesuffix(".__init__") if name != "__init__" else ""] = path
    return modules


def layer_of(module: str) -> str:
    head = module.split(".")[0]
    if module == "":
        return "package"
    return "floor" if head in FLOOR else head


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int, str | None]]:
    """(imported pack module or ``comfyui:<name>``, line, name taken from it or None) for each import in ``path``,
    at any depth. ``from m import x`` takes ``x`` from ``m``, unless ``m.x`` is a module: then it takes that module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in COMFYUI_MODULES:
                    yield f"comfyui:{top}", node.lineno, None
                elif top == PACKAGE:
                    yield _known(alias.name.removeprefix(PACKAGE).lstrip("."), modules), node.lineno, None
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                top = (node.module or "").split(".")[0]
                if top in COMFYUI_MODULES:
                    yield f"comfyui:{top}", node.lineno, None
                    continue
                if top != PACKAGE:
                    continue
                base = (node.module or "").removeprefix(PACKAGE).lstrip(".")
            else:
                here = module.split(".") if module else []
                package = here if is_package else here[:-1]
                up = package[: len(package) - (node.level - 1)]
                base = ".".join([*up, *([node.module] if node.module else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                if candidate in modules:
                    yield candidate, node.lineno, None
                else:
                    yield _known(base, modules), node.lineno, alias.name


def _known(name: str, modules: dict[str, Path]) -> str:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def face_names(path: Path | None) -> frozenset[str]:
    """The names a face's ``__all__`` lists (a literal list or tuple of strings), read without importing it."""
    if path is None or not path.exists():
        return frozenset()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    return frozenset()


def problems(root: Path = ROOT) -> list[str]:
    modules = pack_modules(root)
    faces = {engine: face_names(modules.get(engine)) for engine in ENGINES}
    found: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        layer = layer_of(module)
        where = path.relative_to(root)
        for target, line, name in imports_of(module, path, modules):
            if target.startswith("comfyui:"):
                if layer not in MAY_IMPORT_COMFYUI:
                    found.append(f"{where}:{line}: {layer} imports ComfyUI ({target[8:]})")
                continue
            if name is not None and name.startswith("_") and not name.startswith("__") and target != module:
                found.append(f"{where}:{line}: imports the private name {name} from {target or PACKAGE}; give it a "
                             "public home of its own")
            if target == module or target == "":
                continue
            graph[module].add(target)
            other = layer_of(target)
            if other != layer and other not in ALLOWED[layer]:
                found.append(f"{where}:{line}: {layer} imports {other} ({target})")
            elif layer in THROUGH_FACES and other in ENGINES:
                if target != other:
                    found.append(f"{where}:{line}: {layer} imports {target}; import its names from the face "
                                 f"({other}/__init__.py) instead")
                elif name is None or name not in faces[other]:
                    found.append(f"{where}:{line}: {layer} imports {name or 'the module'} from {other}, which the "
                                 f"face's __all__ does not list")
    found += [f"import circle among: {', '.join(group)}" for group in circles(graph)]
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's strongly connected
    components of more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def main() -> int:
    found = problems()
    for line in found:
        print(line, file=sys.stderr)
    print(f"layering: {len(pack_modules())} modules, {len(found)} problems", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
