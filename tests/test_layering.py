"""The package's shape, checked from its source: imports flow one way, from the HTTP edge inward.

errors/config/glance_options/context/sizes/background < kernels < stores/cache/catalog/formats/quota
< pipeline/imports/identity < services
< api/admin/status < daemon < cli

On top of "never import a higher layer" a few sideways rules hold, each its own test:
the two edges (``api/``, ``admin/``) never import each other; the data layer knows
neither HTTP nor the pipeline; only the edges serve HTTP or read the class -> status
table (``streamd/status.py``); and only ``streamd/stores/`` knows its drivers. Every
rule has a probe that feeds it an offending module, so a rule that can no longer fail
is noticed.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "streamd"

# Components (streamd.<name>) by layer: a module may import its own layer and those below.
# Entries may name modules that do not exist yet (services, while the lead writes it):
# the table is only consulted for modules that are there.
LAYERS = {
    "errors": 0, "config": 0, "glance_options": 0, "context": 0, "sizes": 0, "background": 0, "logs": 0,
    "metrics": 0,  # the Prometheus facade: the one importer of prometheus_client; every layer records through it
    "__init__": 0,
    "kernels": 1,
    "stores": 2, "cache": 2, "catalog": 2, "formats": 2,
    "signing": 2,  # image signatures: certificates (a directory, or Barbican through castellan) and the verifier
    "quota": 2,  # quotas: the catalogue's usage against user_storage_quota or Keystone's limits (its own client)
    "pipeline": 3, "imports": 3,
    "identity": 3,  # Keystone token validation: an HTTP client of Keystone, below the edge that calls it
    "notifications": 3,  # Glance's notifications to the message bus (oslo.messaging), sent by edge and importer
    "health": 3,  # /healthcheck's checks: asks the catalogue, the stores, the staging area and the cache
    "policy": 3,  # Glance's rules over oslo.policy: reads catalogue records, the catalogue never imports it
    "services": 4,  # the composition root: builds stores, cache, pipeline and importer for the edges
    "api": 5, "admin": 5,
    "status": 5,  # class -> HTTP status: read by the edges (and daemon/cli), never by the core
    "daemon": 6,
    "cli": 7, "__main__": 7,
    "sign": 7,  # streamd-sign: the four img_signature* properties of a file
    "manage": 7,  # streamd-manage (glance-manage's verbs): shares the metadefs verbs with cli
    "cache_manage": 7,  # streamd-cache-manage: the admin socket, or another node's HTTP cache API (--host)
    "systemd": 6,  # sd_notify readiness and the SIGHUP re-read of the configuration, for the daemon
}
# Only these may speak HTTP as a server.
HTTP_SERVER_LAYERS = {"api", "admin", "daemon", "cli", "__main__"}
# The two edges: each turns requests into calls on the core, neither knows the other.
EDGES = {"api", "admin"}
# Where image data and records live; below the pipeline and unaware of HTTP.
DATA_LAYER = {"stores", "cache", "catalog", "formats"}
# Everything that works on images, below the composition root.
CORE = DATA_LAYER | {"kernels", "pipeline", "imports", "quota"}
# Who may read the class -> HTTP status table.
STATUS_READERS = {"api", "admin", "daemon", "cli", "__main__"}
# What code outside streamd/stores/ may import from it: the contract and the registry.
STORES_CONTRACT = {"base", "registry"}

# Known violations of the rules below, each (file, rule, what). They are removed by
# the stores seam (the lead's branch): once a file is fixed, its entry here fails
# test_known_violations_are_still_there and is to be deleted. Add nothing new.
KNOWN_VIOLATIONS: set[tuple[str, str, str]] = set()  # emptied by the stores seam; keep it empty


class Violation(NamedTuple):
    file: str
    rule: str
    what: str
    line: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.file, self.rule, self.what)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.what}"


@dataclass(frozen=True)
class Source:
    """One module of the package: where it is, and the dotted name it is imported by."""

    path: Path
    module: str

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def component(self) -> str:
        parts = self.module.split(".")
        return parts[1] if len(parts) > 1 else "__init__"

    @property
    def label(self) -> str:
        try:
            return str(self.path.relative_to(PACKAGE.parent))
        except ValueError:  # a probe outside the tree
            return self.module

    @functools.cached_property
    def tree(self) -> ast.Module:
        return ast.parse(self.path.read_text(), str(self.path))


class Imported(NamedTuple):
    """``import module`` (name None) or ``from module import name``, absolute."""

    module: str
    name: str | None
    line: int

    @property
    def targets(self) -> tuple[str, ...]:
        """What this may bring in: the module, and ``module.name`` (a submodule or a name in it)."""
        if self.name is None or self.name == "*":
            return (self.module,)
        return (self.module, f"{self.module}.{self.name}")


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


def _imports(source: Source) -> list[Imported]:
    found: list[Imported] = []
    for node in ast.walk(source.tree):
        if isinstance(node, ast.Import):
            found.extend(Imported(alias.name, None, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = source.module.split(".")
                if not source.is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.extend(Imported(module, alias.name, node.lineno) for alias in node.names)
    return found


def _streamd_targets(source: Source) -> Iterator[tuple[str, str, int]]:
    """(target, its component, line) for every streamd module or name the source imports."""
    for imported in _imports(source):
        for target in imported.targets:
            if target == "streamd" or target.startswith("streamd."):
                other = _component(target)
                if other != "__init__":
                    yield target, other, imported.line


def _is_http_server(target: str) -> bool:
    return target.startswith("aiohttp.web")  # aiohttp.web, and its parts: aiohttp.web_request, ...


def _http_server_uses(source: Source) -> Iterator[tuple[str, int]]:
    """aiohttp.web by import (``from aiohttp import web``, ``aiohttp.web_response``) or attribute."""
    for imported in _imports(source):
        for target in imported.targets:
            if _is_http_server(target):
                yield target, imported.line
    for node in ast.walk(source.tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "aiohttp" and node.attr.startswith("web")):
            yield f"aiohttp.{node.attr}", node.lineno


def _is_status_table(target: str) -> bool:
    return target == "streamd.status" or target.startswith("streamd.status.")


def _check(found: list[Violation]) -> None:
    """Fail with every violation not on the known list."""
    new = [v for v in found if v.key not in KNOWN_VIOLATIONS]
    assert not new, "\n".join(str(v) for v in new)


SOURCES = [Source(p, _module_name(p)) for p in sorted(PACKAGE.rglob("*.py")) if "migrations" not in p.parts]
every_source = pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.label)


def probe(tmp_path: Path, module: str, text: str) -> Source:
    """A module that is not in the tree but is checked as if it were ``module``."""
    path = tmp_path / (module.rsplit(".", 1)[-1] + ".py")
    path.write_text(text)
    return Source(path, module)


# -- the layer table ---------------------------------------------------------------------------

def test_every_component_has_a_layer() -> None:
    for source in SOURCES:
        assert source.component in LAYERS, f"{source.label}: add its component to LAYERS"


def test_layer_table_places_the_seams() -> None:
    """Where the modules that join the layers sit, whether or not they exist yet."""
    # The composition root: above everything it builds, below everything that serves.
    assert max(LAYERS["pipeline"], LAYERS["imports"]) < LAYERS["services"]
    assert LAYERS["services"] < min(LAYERS["api"], LAYERS["admin"], LAYERS["daemon"])
    # The status table sits with the edges: nothing below them may read it.
    assert LAYERS["status"] == LAYERS["api"] == LAYERS["admin"]
    assert LAYERS["services"] < LAYERS["status"] < LAYERS["daemon"]
    # Errors only HTTP has are the API's own, not the core's.
    assert _component("streamd.api.errors") == "api"
    assert _component("streamd.errors") == "errors"


def outward_imports(source: Source) -> list[Violation]:
    found = []
    own = source.component
    for target, other, line in _streamd_targets(source):
        if own not in LAYERS or other not in LAYERS:
            continue  # test_every_component_has_a_layer names it
        if LAYERS[other] > LAYERS[own]:
            found.append(Violation(source.label, "outward import", f"{own} imports {target} ({other})", line))
    if own not in HTTP_SERVER_LAYERS:
        # Below the edge only the HTTP *client* may be used (web-download, peers), never aiohttp.web.
        for target, line in _http_server_uses(source):
            found.append(Violation(source.label, "HTTP server below the edge", f"{own} uses {target}", line))
    return found


@every_source
def test_imports_flow_inward(source: Source) -> None:
    _check(outward_imports(source))


def test_checker_catches_an_outward_import(tmp_path: Path) -> None:
    """The test above can fail: an inward module importing the API is flagged."""
    fake = probe(tmp_path, "streamd.catalog._layering_probe", "from ..api import create_app\n")
    with pytest.raises(AssertionError, match="outward import"):
        test_imports_flow_inward(fake)
    fake = probe(tmp_path, "streamd.pipeline._layering_probe", "from aiohttp import web\n")
    with pytest.raises(AssertionError, match="HTTP server below the edge"):
        test_imports_flow_inward(fake)


# -- the two edges -----------------------------------------------------------------------------

def edges_importing_each_other(source: Source) -> list[Violation]:
    own = source.component
    if own not in EDGES:
        return []
    return [Violation(source.label, "edge imports the other edge", f"{own} imports {target}", line)
            for target, other, line in _streamd_targets(source) if other in EDGES - {own}]


@every_source
def test_the_edges_do_not_import_each_other(source: Source) -> None:
    _check(edges_importing_each_other(source))


def test_checker_catches_an_edge_importing_the_other(tmp_path: Path) -> None:
    for module, text in [("streamd.api._probe", "from ..admin.server import AdminServer\n"),
                         ("streamd.admin._probe", "from streamd import api\n"),
                         ("streamd.admin._probe", "import streamd.api.middleware\n")]:
        with pytest.raises(AssertionError, match="edge imports the other edge"):
            test_the_edges_do_not_import_each_other(probe(tmp_path, module, text))


# -- the data layer ----------------------------------------------------------------------------

# What the data layer must never import: the HTTP server, the edges and their status table,
# and the layers that drive it.
DATA_LAYER_MUST_NOT_IMPORT = {"status", "api", "admin", "pipeline", "imports", "services", "daemon", "cli"}


def data_layer_reaching_up(source: Source) -> list[Violation]:
    own = source.component
    if own not in DATA_LAYER:
        return []
    found = [Violation(source.label, "data layer imports HTTP or the pipeline", f"{own} imports {target}", line)
             for target, other, line in _streamd_targets(source) if other in DATA_LAYER_MUST_NOT_IMPORT]
    found += [Violation(source.label, "data layer imports HTTP or the pipeline", f"{own} uses {target}", line)
              for target, line in _http_server_uses(source)]
    return found


@every_source
def test_the_data_layer_knows_neither_http_nor_the_pipeline(source: Source) -> None:
    _check(data_layer_reaching_up(source))


def test_checker_catches_the_data_layer_reaching_up(tmp_path: Path) -> None:
    for module, text in [("streamd.stores._probe", "from aiohttp import web\n"),
                         ("streamd.cache._probe", "from aiohttp.web_exceptions import HTTPNotFound\n"),
                         ("streamd.catalog._probe", "from ..status import status_of\n"),
                         ("streamd.formats._probe", "from streamd.pipeline import upload_image\n"),
                         ("streamd.stores._probe", "from ..imports.staging import StagingArea\n"),
                         ("streamd.catalog._probe", "import streamd.admin\n")]:
        with pytest.raises(AssertionError, match="data layer imports HTTP or the pipeline"):
            test_the_data_layer_knows_neither_http_nor_the_pipeline(probe(tmp_path, module, text))
    # streamd.catalog.status (the image state machine) is not the HTTP status table.
    fine = probe(tmp_path, "streamd.catalog._probe", "from .status import check_transition\n")
    test_the_data_layer_knows_neither_http_nor_the_pipeline(fine)


# -- HTTP server code and the status table -----------------------------------------------------

def core_serving_http(source: Source) -> list[Violation]:
    """The core serves no HTTP; and only the edges (and daemon/cli) read the status table."""
    own = source.component
    found = []
    if own in CORE:
        found += [Violation(source.label, "core uses the HTTP server", f"{own} uses {target}", line)
                  for target, line in _http_server_uses(source)]
    if own not in STATUS_READERS and own != "status":
        found += [Violation(source.label, "reads the HTTP status table", f"{own} imports {target}", line)
                  for target, _, line in _streamd_targets(source) if _is_status_table(target)]
    return found


@every_source
def test_only_the_edges_serve_http_or_read_the_status_table(source: Source) -> None:
    _check(core_serving_http(source))


def test_checker_catches_the_core_serving_http(tmp_path: Path) -> None:
    for module, text, rule in [
        ("streamd.kernels._probe", "import aiohttp.web\n", "core uses the HTTP server"),
        ("streamd.pipeline._probe", "import aiohttp\nresponse = aiohttp.web.Response\n", "core uses the HTTP server"),
        ("streamd.imports._probe", "from aiohttp import web_response\n", "core uses the HTTP server"),
        ("streamd.pipeline._probe", "from ..status import status_of\n", "reads the HTTP status table"),
        ("streamd.imports._probe", "from streamd import status\n", "reads the HTTP status table"),
        ("streamd.services", "from .status import HTTP_STATUS\n", "reads the HTTP status table"),
        ("streamd.errors", "from . import status\n", "reads the HTTP status table"),
    ]:
        with pytest.raises(AssertionError, match=rule):
            test_only_the_edges_serve_http_or_read_the_status_table(probe(tmp_path, module, text))
    # The HTTP client stays allowed where it is needed (peers, web-download).
    client = probe(tmp_path, "streamd.pipeline._probe",
                   "import aiohttp\nfrom aiohttp import ClientSession, ClientTimeout\n"
                   "session = aiohttp.ClientSession\n")
    test_only_the_edges_serve_http_or_read_the_status_table(client)
    test_imports_flow_inward(client)
    # The edges read it.
    test_only_the_edges_serve_http_or_read_the_status_table(
        probe(tmp_path, "streamd.admin._probe", "from ..status import status_of\nfrom aiohttp import web\n"))


def test_the_status_table_depends_only_on_errors() -> None:
    """status.py sits with the edges but is a table of the core's errors: it imports no edge."""
    [status] = [s for s in SOURCES if s.module == "streamd.status"]
    assert {other for _, other, _ in _streamd_targets(status)} <= {"errors"}


# -- store drivers -----------------------------------------------------------------------------

def _driver_modules() -> set[str]:
    """streamd/stores/<driver>: every module of the package but the contract and the registry."""
    names = {p.stem for p in (PACKAGE / "stores").glob("*.py")} | {
        p.name for p in (PACKAGE / "stores").iterdir() if (p / "__init__.py").exists()}
    return names - STORES_CONTRACT - {"__init__"}


@functools.cache
def _driver_names() -> frozenset[str]:
    """The classes the drivers define (FileStore, FileWriter, RbdStore, ...)."""
    names = set()
    for driver in _driver_modules():
        path = PACKAGE / "stores" / f"{driver}.py"
        if not path.exists():
            path = PACKAGE / "stores" / driver / "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        names |= {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    return frozenset(names)


def _class_names(node: ast.expr) -> Iterator[tuple[str, int]]:
    if isinstance(node, ast.Tuple):
        for element in node.elts:
            yield from _class_names(element)
    elif isinstance(node, ast.Name):
        yield node.id, node.lineno
    elif isinstance(node, ast.Attribute):
        yield node.attr, node.lineno


def drivers_known_outside_stores(source: Source) -> list[Violation]:
    if source.component == "stores":
        return []
    found = []
    drivers, driver_names = _driver_modules(), _driver_names()
    for imported in _imports(source):
        for target in imported.targets:
            parts = target.split(".")
            if parts[:2] != ["streamd", "stores"] or len(parts) < 3:
                continue
            if parts[2] in drivers or (len(parts) == 3 and parts[2] in driver_names):
                found.append(Violation(source.label, "store driver import", target, imported.line))
    # Asking which driver a store is: the contract should say what the caller needs instead.
    store_classes = {name for name in driver_names if name.endswith("Store")}
    for node in ast.walk(source.tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2):
            for name, line in _class_names(node.args[1]):
                if name in store_classes:
                    found.append(Violation(source.label, "store driver isinstance", name, line))
    return found


@every_source
def test_only_stores_know_the_drivers(source: Source) -> None:
    _check(drivers_known_outside_stores(source))


def test_checker_catches_a_driver_outside_stores(tmp_path: Path) -> None:
    assert {"file", "rbd"} <= _driver_modules()
    assert {"FileStore", "RbdStore"} <= _driver_names()
    for module, text, rule in [
        ("streamd.pipeline._probe", "from ..stores.file import FileStore\n", "store driver import"),
        ("streamd.cache._probe", "from streamd.stores import rbd\n", "store driver import"),
        ("streamd.api._probe", "import streamd.stores.rbd\n", "store driver import"),
        ("streamd.imports._probe", "from ..stores import Store, RbdStore\n", "store driver import"),
        ("streamd.services", "from .stores import FileStore\n", "store driver import"),
        ("streamd.pipeline._probe", "def f(s, t):\n    return isinstance(s, (str, RbdStore))\n",
         "store driver isinstance"),
        ("streamd.api._probe", "from .. import stores\nok = lambda s: isinstance(s, stores.FileStore)\n",
         "store driver isinstance"),
    ]:
        with pytest.raises(AssertionError, match=rule):
            test_only_stores_know_the_drivers(probe(tmp_path, module, text))
    # The contract and the registry are for everyone; inside stores/ the drivers are its own.
    test_only_stores_know_the_drivers(probe(tmp_path, "streamd.imports._probe", (
        "from ..stores import Store, StoreRegistry, StoredData\nfrom ..stores.base import Reader\n"
        "from streamd.stores.registry import StoreRegistry\nimport streamd.stores\n"
        "ok = lambda s: isinstance(s, Store)\n")))
    test_only_stores_know_the_drivers(probe(tmp_path, "streamd.stores", (
        "from .file import FileStore\nok = lambda s: isinstance(s, FileStore)\n")))


# -- the allow-list ----------------------------------------------------------------------------

RULES: list[Callable[[Source], list[Violation]]] = [
    outward_imports, edges_importing_each_other, data_layer_reaching_up, core_serving_http,
    drivers_known_outside_stores,
]


def test_known_violations_are_still_there() -> None:
    """An entry of KNOWN_VIOLATIONS whose code was fixed is deleted, so the list only shrinks."""
    present = {v.key for source in SOURCES for rule in RULES for v in rule(source)}
    stale = KNOWN_VIOLATIONS - present
    assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(stale)}"
