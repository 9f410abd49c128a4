"""The two floors of docs/architecture.md: the core never imports the experiments floor, and needs NumPy and SciPy only."""

import ast
import os
import subprocess
import sys
import textwrap

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nn_eos")
EXPERIMENTS_ONLY = ("matplotlib", "tqdm", "dask", "distributed", "tomli", "tomllib", "threadpoolctl")


def imports(path):
    """(module imported, level of relative import, at module level?) for every import in a file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module + '.' if node.module else ''}{a.name}" for a in node.names]
            found += [(name, node.level, id(node) in top) for name in names]
    return found


def core_modules():
    """Every module of the core: nn_eos/ and its subpackages (nn_eos.eigen, nn_eos.testing), not the experiments."""
    return sorted(os.path.join(folder, f) for folder, dirs, files in os.walk(PACKAGE) for f in files
                  if f.endswith(".py") and "experiments" not in os.path.relpath(folder, PACKAGE).split(os.sep))


def module_name(path):
    parts = os.path.relpath(path, os.path.dirname(PACKAGE))[:-len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_import_graph():
    """module → the core modules it imports anywhere in its body (at module level or inside a function)."""
    modules = {module_name(path): path for path in core_modules()}
    graph = {}
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        found = set()
        for imported, level, _ in imports(path):
            if level:
                base = package.rsplit(".", level - 1)[0] if level > 1 else package
                imported = f"{base}.{imported}" if imported else base
            while imported and imported not in modules:      # a name imported from a module: that module
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                found.add(imported)
        graph[name] = found
    return graph


def circles(graph):
    """Modules that reach themselves through imports, not counting a package's __init__ importing its own modules
    (re-exports)."""
    def edges(name):
        return [t for t in graph.get(name, ()) if not t.startswith(name + ".")]

    def reaches(start, goal):
        seen, todo = set(), list(edges(start))
        while todo:
            name = todo.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                todo += edges(name)
        return False

    return sorted(name for name in graph if reaches(name, name))


def test_the_core_has_no_import_circle():
    """Data flow one way (docs/architecture.md): no core module imports, even inside a function, a module that
    imports it back, directly or through others."""
    assert circles(core_import_graph()) == []


def test_the_circle_check_sees_circles():
    """The check above is not vacuous: the graph holds the real imports, and a circle of two or three is seen."""
    graph = core_import_graph()
    assert "nn_eos.integrators" in graph["nn_eos.adaptive"] and "nn_eos.eigen.krylov" in graph["nn_eos.eigen.solvers"]
    assert circles({**graph, "nn_eos.integrators": graph["nn_eos.integrators"] | {"nn_eos.adaptive"}}) == [
        "nn_eos.adaptive", "nn_eos.integrators"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "p": {"p.q"}, "p.q": set()}) == ["a", "b", "c"]


def test_the_core_never_imports_the_experiments_floor():
    offenders = [(os.path.basename(path), name) for path in core_modules() for name, level, _ in imports(path)
                 if "experiments" in name.split(".")]
    assert offenders == []


def test_the_core_imports_no_experiment_dependency_at_module_level():
    offenders = [(os.path.basename(path), name) for path in core_modules() for name, level, top in imports(path)
                 if top and level == 0 and name.split(".")[0] in EXPERIMENTS_ONLY]
    assert offenders == []


def test_the_experiments_floor_is_found_by_the_checks():
    """The checks above would see an offending import (they are not vacuous)."""
    experiments = os.path.join(PACKAGE, "experiments")
    seen = {name.split(".")[0] for f in os.listdir(experiments) if f.endswith(".py")
            for name, level, top in imports(os.path.join(experiments, f)) if level == 0}
    assert {"matplotlib", "tqdm"} <= seen
    assert any(name.endswith("experiments.demo") or name == "demo"
               for name, level, _ in imports(os.path.join(experiments, "cli.py")) if level == 1)


def test_import_nn_eos_and_a_curvature_product_need_numpy_and_scipy_only():
    blocked = ", ".join(repr(m) for m in EXPERIMENTS_ONLY)
    script = textwrap.dedent(f"""
        import sys
        for name in ({blocked},):
            sys.modules[name] = None          # importing any of them now raises ImportError
        import numpy as np, nn_eos as ne
        net = ne.mlp([3, 4, 2], seed=0)
        loss = ne.TrainingLoss(net, "cross_entropy", np.ones((5, 3)), np.arange(5) % 2)
        loss.hvp(np.ones(net.num_params))
        ne.train(loss, ne.GradientDescent(0.1), max_steps=2, progress=False)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_public_checks_need_no_test_extra():
    """pip install nn_eos (no [test] extra) gives nn_eos.testing and its checks; only its strategies need
    hypothesis, and say so."""
    script = textwrap.dedent("""
        import sys
        sys.modules["hypothesis"] = None
        import nn_eos as ne
        from nn_eos import testing
        testing.check_layer(ne.Dense(3, 2), (3,))
        testing.check_activation(ne.Tanh())
        try:
            import nn_eos.testing.strategies
        except ImportError as error:
            assert "pip install 'nn_eos[test]'" in str(error)
            print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
