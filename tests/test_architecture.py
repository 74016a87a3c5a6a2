"""Rules of the code base that a reviewer should not have to check by eye.

- Dependencies point one way: ``engine`` imports nothing of ``actors``, ``adapters``,
  ``simulations`` or ``kestrel``; ``actors`` and ``adapters`` import ``engine`` (and
  themselves) only; only the composition root (``kestrel``) knows everything.
- No dynamic imports.
- Only ``engine/clock.py`` reads the wall clock or sleeps; nobody calls ``time.sleep``.
- No bare ``except:``, and no ``except Exception`` whose body only passes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "actors", "adapters", "simulations", "kestrel")
ALLOWED = {
    "engine": {"engine"},
    "actors": {"engine", "actors"},
    "adapters": {"engine", "adapters"},
    "simulations": set(PACKAGES),
    "kestrel": set(PACKAGES),
}
CLOCK_MODULE = ROOT / "engine" / "clock.py"


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package: str) -> None:
    offenders = []
    for path in sources(package):
        own = imported_roots(ast.parse(path.read_text(), str(path))) & set(PACKAGES)
        if own - ALLOWED[package]:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(own - ALLOWED[package])}")
    assert not offenders, "\n".join(offenders)


def _calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                found.append((node.lineno, f"{func.value.id}.{func.attr}"))
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute):
                found.append((node.lineno, f"{func.value.attr}.{func.attr}"))
            elif isinstance(func, ast.Name):
                found.append((node.lineno, func.id))
    return found


FORBIDDEN_CALLS = {
    "time.sleep",
    "time.time",
    "time.time_ns",
    "time.monotonic",
    "datetime.now",
    "datetime.utcnow",
    "asyncio.sleep",
    "__import__",
    "importlib.import_module",
}


def test_time_is_read_only_through_the_engine_clock() -> None:
    offenders = []
    for path in sources(*PACKAGES):
        for lineno, name in _calls(ast.parse(path.read_text(), str(path))):
            if name in FORBIDDEN_CALLS and not (path == CLOCK_MODULE and name != "time.sleep"):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {name}()")
    assert not offenders, "\n".join(offenders)


def test_no_bare_or_silent_excepts() -> None:
    offenders = []
    for path in sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ExceptHandler):
                if node.type is None:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: bare except")
                elif all(isinstance(stmt, ast.Pass) for stmt in node.body):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: except that only passes")
    assert not offenders, "\n".join(offenders)


def test_money_fields_of_messages_are_never_floats() -> None:
    import typing

    import msgspec

    from engine import messages

    offenders = []
    for name in dir(messages):
        cls = getattr(messages, name)
        if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
            for field, hint in typing.get_type_hints(cls).items():
                if "float" in repr(hint):
                    offenders.append(f"{name}.{field}: {hint}")
    assert not offenders, "\n".join(offenders)
