"""Imports flow one way, from the HTTP edge inward.

errors/config/glance_options/context/sizes < kernels < stores/cache/catalog/formats < pipeline/imports < api/admin < daemon < cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "streamd"

LAYERS = {
    "errors": 0, "config": 0, "glance_options": 0, "context": 0, "sizes": 0, "__init__": 0, "background": 0,
    "kernels": 1,
    "stores": 2, "cache": 2, "catalog": 2, "formats": 2,
    "pipeline": 3, "imports": 3, "services": 3.5,
    "api": 4, "admin": 4, "status": 4,
    "daemon": 5,
    "cli": 6, "__main__": 6,
}
# Only these may speak HTTP as a server.
HTTP_SERVER_LAYERS = {"api", "admin", "daemon", "cli", "__main__"}


def _component(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "streamd", module
    if len(parts) == 1:
        return "__init__"
    if not ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").exists()):
        return "__init__"  # a name defined in streamd/__init__.py, such as __version__
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
        return ".".join(parts) if len(parts) > 1 else "streamd"
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    found.extend(f"{target}.{alias.name}" for alias in node.names)
                else:
                    found.append(target)
            elif node.module:
                found.append(node.module)
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def test_every_component_has_a_layer() -> None:
    for path in SOURCES:
        assert _component(_module_name(path)) in LAYERS, f"{path}: add its component to LAYERS"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_flow_inward(path: Path) -> None:
    own = _component(_module_name(path))
    for target in _imports(path):
        if target == "streamd" or target.startswith("streamd."):
            other = _component(target)
            if other == "__init__":
                continue
            assert LAYERS[other] <= LAYERS[own], f"{path.name} ({own}) imports {target} ({other}): outward import"
        if target.startswith("aiohttp") and own not in HTTP_SERVER_LAYERS:
            # Below the edge only the HTTP *client* may be used (web-download, peers), never aiohttp.web.
            assert not target.startswith("aiohttp.web"), f"{path.name} ({own}) imports {target}"


def test_checker_catches_an_outward_import(tmp_path: Path) -> None:
    """The test above can fail: an inward module importing the API is flagged."""
    fake = PACKAGE / "catalog" / "_layering_probe.py"
    fake.write_text("from ..api import create_app\n")
    try:
        with pytest.raises(AssertionError, match="outward import"):
            test_imports_flow_inward(fake)
    finally:
        fake.unlink()
