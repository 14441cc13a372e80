"""The repository's import structure (DEVELOPING.md, "Layout"): arrows point down only.

cli -> train -> nn -> avatar -> render -> flame -> geometry -> ffavatar_kernels; the kernel package
never imports the model layer; no circle between modules; outside the kernel package (model
layer, benchmarks, scripts) nobody imports a ``_private`` kernel module.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# layer of each model-layer subpackage: a module may import only subpackages of a lower layer
# (or its own subpackage)
LAYERS = {"geometry": 0, "flame": 1, "render": 2, "avatar": 3, "nn": 4, "train": 5, "cli": 6}


def _modules(package: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _imports(name: str, path: str, is_package: bool) -> set[str]:
    """Absolute names of the modules ``path`` imports (module level and inside functions)."""
    tree = ast.parse(open(path).read(), path)
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def _graph(packages=("ffavatar", "ffavatar_kernels")):
    mods = {}
    for p in packages:
        mods.update(_modules(p))
    graph = {}
    for name, path in mods.items():
        imps = _imports(name, path, path.endswith("__init__.py"))
        graph[name] = {m for m in imps if m in mods and m != name}
    return mods, graph


def test_kernel_package_never_imports_the_model_layer():
    mods, _ = _graph()
    bad = [(n, m) for n, p in mods.items() if n.startswith("ffavatar_kernels")
           for m in _imports(n, p, p.endswith("__init__.py")) if m == "ffavatar" or m.startswith("ffavatar.")]
    assert not bad, f"ffavatar_kernels imports the model layer: {bad}"


def test_model_layer_arrows_point_down():
    mods, graph = _graph(("ffavatar",))
    bad = []
    for name, deps in graph.items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in LAYERS:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if len(dparts) < 2 or dparts[1] not in LAYERS or dparts[1] == parts[1]:
                continue
            if LAYERS[dparts[1]] >= LAYERS[parts[1]]:
                bad.append(f"{name} -> {dep}")
    assert not bad, "imports running sideways or back up a layer:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    _, graph = _graph()
    # a package's __init__ importing its own submodules is not a cycle of concern; drop those edges
    edges = {n: {d for d in deps if not (n.startswith("ffavatar") and d.startswith(n + "."))}
             for n, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in edges[n]:
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in edges:
        if n not in state:
            visit(n)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("where", ["ffavatar", "benchmarks", "scripts"])
def test_no_private_kernel_module_outside_the_kernel_package(where):
    bad = []
    for name, path in _modules(where).items():
        for m in _imports(name, path, path.endswith("__init__.py")):
            parts = m.split(".")
            if parts[0] == "ffavatar_kernels" and any(p.startswith("_") for p in parts[1:]):
                bad.append(f"{name}: {m}")
    assert not bad, "private kernel modules used outside ffavatar_kernels:\n" + "\n".join(bad)


def test_top_level_names_still_exported():
    import ffavatar
    for name in ("FlameModel", "FlameFileError", "load_flame", "save_flame_npz", "synthetic_head", "subdivide",
                 "CanonicalGaussians", "canonical_gaussians", "intrinsics", "look_at", "orbit", "Animator",
                 "motion_script", "render_frames", "select_backend", "__version__"):
        assert hasattr(ffavatar, name), name
