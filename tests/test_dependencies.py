"""Every third-party module that src/ imports is a declared dependency of the package, so that an install
from pyproject.toml alone (pip install ., a wheel, a container image) has everything the code imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "dynastore"

# Code that only the benchmarks run may use the `bench` extra (its peers and plots) as well.
BENCH_DIR = SRC / "bench"
BENCH_EXTRA = "bench"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"cannot read a name in the requirement {requirement!r}"
    return _normalise(match.group(1))


def declared() -> tuple[set[str], set[str]]:
    """The distributions the package depends on, and those its bench extra adds."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    bench = {_requirement_name(r) for r in project.get("optional-dependencies", {}).get(BENCH_EXTRA, [])}
    return core, bench


def imported_modules(path: Path) -> set[str]:
    """The top-level names of the absolute imports in one file, function-local and guarded ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("dynastore", "__future__")}


@cache
def _installed() -> dict[str, list[str]]:
    return packages_distributions()


def distributions_of(module: str) -> set[str]:
    """The distributions that provide `module`; an uninstalled one (a bench peer's client, say) is taken
    to be the distribution of its own name, as all of ours are."""
    found = _installed().get(module)
    return {_normalise(d) for d in found} if found else {_normalise(module)}


def undeclared_imports() -> list[str]:
    core, bench = declared()
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        allowed = core | bench if BENCH_DIR in path.parents else core
        for module in sorted(third_party(imported_modules(path))):
            if not distributions_of(module) & allowed:
                problems.append(f"{path.relative_to(ROOT)} imports {module}, which no declared dependency provides")
    return problems


def test_every_third_party_import_of_src_is_a_declared_dependency() -> None:
    """A module imported by src/ but provided only by a dependency of a dependency (multidict came with
    aiohttp) breaks the day that dependency stops bringing it: each must be declared in pyproject.toml."""
    assert undeclared_imports() == []


def test_the_walk_sees_the_imports_it_must_check() -> None:
    """The check is not vacuous: it finds the imports the package is known to make, locally and at top level."""
    modules = set().union(*(third_party(imported_modules(p)) for p in SRC.rglob("*.py")))
    assert {"aiohttp", "click", "multidict", "msgpack", "lmdb", "httptools"} <= modules
    assert "json" not in modules and "dynastore" not in modules
    assert distributions_of("yaml_not_a_real_module") == {"yaml-not-a-real-module"}


def test_a_version_is_the_packages_own() -> None:
    """`dynastore --version` prints __version__, which must be the version pyproject.toml declares."""
    from dynastore import __version__

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__
