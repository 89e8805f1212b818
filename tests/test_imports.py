"""The package's import graph: one namespace, one direction, no imports hidden in functions.

Layers, bottom to top (a module may import its own layer and the ones below):
  core          clearmark.settings, clearmark.errors (configuration and errors)
  models        clearmark.models
  engine_build  clearmark.engine_build
  pipeline      clearmark.pipeline (decode, detect, remove, gate, status, encode; evaluation)
  workers       clearmark.workers (tasks, API, CLI), clearmark.migrations
`python -m clearmark` (clearmark.__main__) is the entry point above them all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from clearmark.workers.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "workers": "clearmark.workers",
    "pipeline": "clearmark.pipeline",
    "models": "clearmark.models",
    "engine_build": "clearmark.engine_build",
    "migrations": "clearmark.migrations",
}
LAYERS = {
    "core": 0,
    "clearmark.models": 1,
    "clearmark.engine_build": 2,
    "clearmark.pipeline": 3,
    "clearmark.workers": 4,
    "clearmark.migrations": 4,
    "clearmark.__main__": 5,
}
# Scripts that only run inside their host (Alembic's environment), not importable alone.
HOSTED = {"clearmark.migrations.env", "clearmark.__main__"}
# Optional dependencies (extras, a GPU): imported where they are used, so that the rest
# runs without them.
OPTIONAL = {"tensorrt", "pycuda", "s3fs", "flower"}


def package_modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name, from the source folders."""
    found = {f"clearmark.{p.stem}": p for p in (ROOT / "clearmark").glob("*.py")}
    found["clearmark"] = found.pop("clearmark.__init__")
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if folder == "migrations" and "versions" in parts:  # Alembic revision scripts: by path
                continue
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> int:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return LAYERS["core"]


def imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for each import statement."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                out.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                out.append((base, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return out


MODULES = package_modules()


def test_the_package_is_found_whole():
    expected = {"clearmark.settings", "clearmark.errors", "clearmark.workers.cli", "clearmark.workers.api"}
    expected |= {"clearmark.models.train", "clearmark.engine_build.base", "clearmark.migrations.env"}
    assert expected <= set(MODULES)


def test_nothing_imports_the_folders_as_top_level_packages():
    """`import workers` works from the repository root only, and would load a second copy
    of every module; installed, the package is clearmark.*."""
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for path in [*MODULES.values(), *ROOT.glob("tests/*.py"), *ROOT.glob("scripts/*.py")]
        for target, line, _ in imports(path, "tests")
        if target.split(".")[0] in FOLDERS
    ]
    assert not wrong, "import these as clearmark.<folder>:\n" + "\n".join(wrong)


def test_imports_point_down_the_layers():
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)}) at line {line}"
        for name, path in MODULES.items()
        for target, line, _ in imports(path, name)
        if target.startswith("clearmark") and layer(target) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_imports_inside_functions_except_optional_dependencies():
    hidden = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for name, path in MODULES.items()
        for target, line, in_function in imports(path, name)
        if in_function and target.split(".")[0] not in OPTIONAL
    ]
    assert not hidden, "move these imports to the top of their module:\n" + "\n".join(hidden)


def _loaded_after(statement: str, candidates: tuple[str, ...]) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {candidates!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_every_module_imports_cleanly_on_its_own_layer_first():
    """Import each layer's modules before anything above them is loaded: a cycle or a
    missing import fails here, whatever order the tests happen to import things in."""
    for rank in sorted(set(LAYERS.values())):
        names = sorted(n for n in MODULES if layer(n) == rank and n not in HOSTED)
        if names:
            _loaded_after("\n".join(f"import {n}" for n in names), ())


@pytest.mark.parametrize(
    ("module", "must_not_load"),
    [
        # `clearmark --help` and every command's start stay light.
        ("clearmark.workers.cli", ("torch", "celery", "fastapi", "sqlalchemy", "numpy")),
        # The API serves uploads and job documents; it never runs a model.
        ("clearmark.workers.api", ("torch", "onnxruntime", "clearmark.engine_build")),
    ],
)
def test_light_entry_points_stay_light(module, must_not_load):
    assert _loaded_after(f"import {module}", must_not_load) == []


# What the commands run; their --help imports none of it (workers/commands/deferred.py).
HELP_MUST_NOT_LOAD = (
    "torch",
    "onnxruntime",
    "numpy",
    "cv2",
    "PIL",
    "celery",
    "kombu",
    "sqlalchemy",
    "alembic",
    "fastapi",
    "uvicorn",
)


def test_every_commands_help_stays_light():
    """`clearmark --help`, then each command's and subcommand's in turn, in one process: the
    first that loads one of HELP_MUST_NOT_LOAD is named."""
    code = f"""
import contextlib, io, sys
import click
from clearmark.workers.cli import COMMANDS, cli
def check(path):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        status = cli.main([*path, "--help"], prog_name="clearmark", standalone_mode=False)
    assert status == 0 and "Usage:" in out.getvalue(), path
    loaded = [m for m in {HELP_MUST_NOT_LOAD!r} if m in sys.modules]
    if loaded:
        sys.exit(f"clearmark {{' '.join(path)}} --help loads {{' '.join(loaded)}}")
    return 1
checked = check([])
for name in COMMANDS:
    checked += check([name])
    for sub in getattr(cli.get_command(click.Context(cli), name), "commands", {{}}):
        checked += check([name, sub])
print(checked)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > len(COMMANDS) + 10  # groups' subcommands included


def deferred_twins(tree: ast.Module) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> module) imported in `if TYPE_CHECKING:` blocks, and (name -> module) that
    their `else:` binds with `deferred("module")`."""
    typed: dict[str, str] = {}
    bound: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"):
            continue
        for statement in node.body:
            if isinstance(statement, ast.Import):
                typed.update({a.asname or a.name: a.name for a in statement.names})
            elif isinstance(statement, ast.ImportFrom):
                typed.update({a.asname or a.name: f"{statement.module}.{a.name}" for a in statement.names})
        for statement in node.orelse:
            match statement:
                case ast.Assign(
                    targets=[ast.Name(id=name)],
                    value=ast.Call(func=ast.Name(id="deferred"), args=[ast.Constant(value=str(module))]),
                ):
                    bound[name] = module
    return typed, bound


def test_each_deferred_module_is_the_one_its_type_checking_twin_imports():
    """A deferred module is checked as the module its TYPE_CHECKING import names: the
    two must name the same one, or the types describe another module than the one run."""
    found = 0
    for name, path in MODULES.items():
        typed, bound = deferred_twins(ast.parse(path.read_text()))
        found += len(bound)
        wrong = {n: m for n, m in bound.items() if typed.get(n) != m}
        assert not wrong, f"{name}: deferred {wrong}, but TYPE_CHECKING imports {typed}"
    assert found >= 30
