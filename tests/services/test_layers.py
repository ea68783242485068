"""The import direction between service packages: heartbeat reads config, config never imports heartbeat."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

_SERVICES = Path(__file__).resolve().parents[2] / "services"
_FORBIDDEN = {
    "config": ("services.heartbeat", "services.server"),
    "heartbeat": ("services.server",),
    "admin": ("services.heartbeat", "services.config", "services.server"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(_FORBIDDEN))
def test_a_package_never_imports_back_up_the_house(package: str) -> None:
    offending = sorted(
        f"{path.relative_to(_SERVICES.parent)} imports {name}"
        for path in (_SERVICES / package).rglob("*.py")
        for name in _imports(path)
        if name.startswith(_FORBIDDEN[package])
    )
    assert offending == []
