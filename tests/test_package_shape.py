"""The package's shape: coursekit's modules import each other without cycles (imports inside
functions included), the low-level ones never import the high-level ones, no module reaches for
another's private names, and every `coursekit` name the notebooks, benchmarks and scripts use
exists (a rename that missed a caller fails here, not in a learner's notebook)."""
import ast
import functools
import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
MODULES = sorted(p.stem for p in (ROOT / "coursekit").glob("*.py") if p.stem != "__init__")
# recipes, interactive tools and command lines: they may import anything below them, never the reverse
HIGH_LEVEL = {"zoo", "distill", "compare", "finetune", "widgets", "demo", "cli"}
NOT_IMPORTED = "<used without an import>"


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = (line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines())
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


@functools.cache
def sources() -> dict[str, str]:
    found = {f"coursekit/{m}.py": (ROOT / "coursekit" / f"{m}.py").read_text() for m in MODULES}
    for folder in ("benchmarks", "scripts"):
        found |= {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted((ROOT / folder).glob("*.py"))}
    found |= {p.relative_to(ROOT).as_posix(): notebook_code(p) for p in sorted((ROOT / "units").rglob("*.ipynb"))}
    return found


def coursekit_imports(tree: ast.AST) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(local name -> coursekit module bound by an import, [(module, name) imported from a module])."""
    bound, names = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and not (module == "coursekit" or module.startswith("coursekit.")):
                continue
            if node.level > 1:
                raise AssertionError(f"relative import beyond the package: {ast.unparse(node)}")
            inner = module.removeprefix("coursekit").lstrip(".") if node.level == 0 else module
            for alias in node.names:
                if not inner and alias.name in MODULES:
                    bound[alias.asname or alias.name] = alias.name
                elif inner:
                    names.append((inner.split(".")[0], alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "coursekit" and len(parts) > 1 and alias.asname:
                    bound[alias.asname] = parts[1]
    return bound, names


def uses(source: str) -> list[tuple[str, str]]:
    """Every (coursekit module, name) a source reaches: `from coursekit.m import name` and `m.name`,
    in its code and in the code it holds as strings to run elsewhere (`python -c`, a kernel)."""
    tree = ast.parse(source)
    bound, names = coursekit_imports(tree)
    assigned = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    assigned |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    assigned |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            names.append((bound[node.value.id], node.attr))
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in MODULES
              and node.value.id not in assigned):
            names.append((node.value.id, NOT_IMPORTED))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "from coursekit" in node.value:
            try:
                names += uses(node.value)
            except SyntaxError:
                pass
    return names


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for m in MODULES:
        bound, names = coursekit_imports(ast.parse((ROOT / "coursekit" / f"{m}.py").read_text()))
        graph[m] = ({*bound.values()} | {module for module, _ in names}) - {m}
    return graph


def test_the_helpers_see_imports_of_every_form():
    src = ("from . import zoo\nfrom .train import fit\nimport coursekit.models as m\n"
           "def f():\n    from coursekit import samplers\n    return samplers._private, m.load_model, zoo.RECIPES\n"
           "SNIPPET = 'from coursekit import data\\ndata.load(); viz.grid()'")
    assert sorted(uses(src)) == [("data", "load"), ("models", "load_model"), ("samplers", "_private"), ("train", "fit"),
                                 ("viz", NOT_IMPORTED), ("zoo", "RECIPES")]


def test_modules_import_each_other_without_cycles():
    graph = import_graph()
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for n in sorted(graph[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in MODULES:
        visit(m)


def test_low_level_modules_never_import_recipes_widgets_or_the_command_line():
    assert HIGH_LEVEL <= set(MODULES)
    wrong = {m: sorted(graph & HIGH_LEVEL) for m, graph in import_graph().items() if m not in HIGH_LEVEL and graph & HIGH_LEVEL}
    assert not wrong, f"low-level modules importing high-level ones: {wrong}"
    assert not any("cli" in graph for graph in import_graph().values()), "nothing imports the command line"


@pytest.mark.parametrize("path", sorted(sources()))
def test_no_private_names_across_modules_and_every_name_used_exists(path):
    own = Path(path).stem if path.startswith("coursekit/") else None
    for module, name in uses(sources()[path]):
        if module == own or name == "*":
            continue
        assert name != NOT_IMPORTED, f"{path} uses the module {module} without importing it"
        assert not (name.startswith("_") and not name.startswith("__")), f"{path} uses the private {module}.{name}"
        assert hasattr(importlib.import_module(f"coursekit.{module}"), name), f"{path} uses {module}.{name}, which is gone"


@pytest.mark.slow
def test_the_readme_counts_the_refusal_tests_there_are(request):
    """Counted from this session's own collection when it holds the refusal files unfiltered (as `make
    test`'s does), else by collecting them in a subprocess."""
    import re
    import subprocess
    import sys

    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_refusals_*.py"))
    here = [item for item in request.session.items if item.path.name.startswith("test_refusals_")]
    unfiltered = not (request.config.getoption("keyword") or request.config.getoption("markexpr"))
    if unfiltered and {str(item.path.relative_to(ROOT)) for item in here} == set(files):
        collected = len(here)
    else:
        done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               *files], cwd=ROOT, capture_output=True, text=True, timeout=300)
        collected = int(re.search(r"(\d+) tests? collected", done.stdout).group(1))
    claimed = int(re.search(r"(\d+) tests in `tests/test_refusals_\*\.py`", (ROOT / "README.md").read_text()).group(1))
    assert claimed == collected, f"README says {claimed}, the refusal tests number {collected}"
