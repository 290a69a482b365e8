"""The layout's rules, checked on the source tree (issue 24).

- No module-level import cycle among the package's modules.
- Imports run one way through the layers (``LAYERS``): a module imports only from its own layer or lower ones.
  Function-level imports of project modules are allowed only for the optional extras (flower, ray).
- Every package folder is listed in ``pyproject.toml`` (else a wheel install silently lacks it).
- No source file over 400 lines; no function over 60 lines (tests excepted).
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
PKG = "collafuse_privacy"


def _folders() -> dict[str, Path]:
    """Installed package name -> source folder (``package-dir``, and folders under them)."""
    mapping = {name: ROOT / d for name, d in PYPROJECT["package-dir"].items()}
    out = {}
    for name, folder in mapping.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            dotted = ".".join([name, *rel.parts]) if rel.parts else name
            # a folder mapped explicitly wins over the same folder reached from its parent
            out.setdefault(dotted, init.parent)
    for name, folder in mapping.items():
        out[name] = folder
    return out


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in _folders().items():
        for f in folder.glob("*.py"):
            mods[pkg if f.name == "__init__.py" else f"{pkg}.{f.stem}"] = f
    return mods


MODULES = _modules()


def _is_pkg(mod: str) -> bool:
    return MODULES[mod].name == "__init__.py"


def _targets(mod: str, node) -> list[str]:
    """Project modules named by one import statement."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".")
            base = base[: len(base) - node.level + (1 if _is_pkg(mod) else 0)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names]
    out = []
    for n in names:
        while n and n not in MODULES:
            n = n.rpartition(".")[0]
        if n and n != mod and n.startswith(PKG):
            out.append(n)
    return out


def _imports(top_level: bool) -> dict[str, set[str]]:
    """Module -> the project modules it imports at import time (module level and class bodies), or inside functions."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text())

        def visit(node, in_function: bool):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function != top_level:
                    graph[mod].update(_targets(mod, child))
                elif isinstance(child, ast.If) and _is_type_checking(child.test):
                    continue  # typing-only imports never run
                fn = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, in_function or fn)

        visit(tree, False)
    return graph


def _is_type_checking(test) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


# the layers, lowest first: a module may import its own layer and the ones below (module prefixes; the longest
# matching prefix wins). Attacks see only the server's view, the diffusion model and the utilities.
LAYERS = [
    ("utils", ["errors", "io", "lock", "rng", "numbers", "linalg", "registry", "typed", "options", "targets",
               "defenses", "defenses.accounting", "defenses.unlinked", "eval.stats", "eval.audit_stats", "eval.roc",
               "configs"]),
    ("config", ["config"]),
    ("diffusion", ["diffusion", "models", "party", "defenses.dp_sgd"]),  # a denoiser and its training step
    ("protocol", ["protocol"]),
    ("data / run", ["data", "run", "client_secrets", "checkpoint", "view"]),
    ("attacks", ["attacks"]),
    ("training", ["resolve", "resources", "training", "sampling", "defenses.privacy"]),
    ("eval", ["eval"]),
    ("flower / orchestration", ["flower", "orchestration", "stages", "sweep", "ray_executor"]),
    ("cli", ["cli", "__main__"]),
]
ATTACKS_MAY_IMPORT = ("utils", "config", "diffusion", "protocol", "attacks")  # and the view itself


def layer_of(mod: str) -> int:
    name = mod[len(PKG) + 1:] if mod != PKG else ""
    best, layer = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    return layer


def test_every_module_has_a_layer():
    assert not [m for m in MODULES if m != PKG and layer_of(m) is None]


def test_imports_run_one_way():
    """utils -> config -> diffusion -> protocol -> data/run -> training -> eval -> flower/orchestration -> cli."""
    bad = []
    for mod, targets in _imports(top_level=True).items():
        if mod == PKG:
            continue
        for t in targets:
            if t == PKG:
                continue
            lm, lt = layer_of(mod), layer_of(t)
            if lt > lm:
                bad.append(f"{mod} ({LAYERS[lm][0]}) imports {t} ({LAYERS[lt][0]})")
            elif LAYERS[lm][0] == "attacks" and LAYERS[lt][0] not in ATTACKS_MAY_IMPORT and t != f"{PKG}.view":
                bad.append(f"{mod} (an attack) imports {t}: attacks see only the view, diffusion and utils")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def _parents_imports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its own modules is not a cycle of the layout: drop edges from a
    package to its own submodules (the submodules importing siblings stays checked)."""
    return {m: {t for t in ts if not (_is_pkg(m) and t.startswith(m + "."))} for m, ts in graph.items()}


def test_no_module_level_import_cycle():
    cycles = _cycles(_parents_imports(_imports(top_level=True)))
    assert not cycles, f"module-level import cycles: {cycles}"


def test_function_level_imports_only_for_optional_extras():
    """Function-level imports of project modules hide cycles; allowed only where an optional extra needs them."""
    allowed = re.compile(r"(flower|ray)")
    bad = {m: sorted(ts) for m, ts in _imports(top_level=False).items()
           if ts and not allowed.search(m) and not all(allowed.search(t) for t in ts)}  # fmt: skip
    assert not bad, f"function-level imports of project modules: {bad}"


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(PYPROJECT["packages"])
    missing = sorted(p for p in _folders() if p not in listed)
    assert not missing, f"package folders missing from pyproject.toml [tool.setuptools] packages: {missing}"


def _sources():
    for mod, path in sorted(MODULES.items()):
        yield mod, path
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        yield f"benchmarks.{path.stem}", path


def test_no_source_file_over_400_lines():
    long = {m: n for m, p in _sources() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"


def test_no_function_over_60_lines():
    long = {}
    for mod, path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long[f"{mod}.{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, f"functions over 60 lines: {long}"
