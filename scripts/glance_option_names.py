"""Write streamd/glance_options.py: the names of every option a Glance 33 glance-api.conf may hold.

Run with the Python of an environment where Glance is installed (not streamd's):

    .venv-glance/bin/python scripts/glance_option_names.py > streamd/glance_options.py

The namespaces are those of Glance's own generator configurations for glance-api.conf
(etc/oslo-config-generator/glance-api.conf) and glance-image-import.conf, plus osprofiler
and the keystoneauth plugins a [keystone_authtoken] section is written for. streamd's
loader accepts exactly these names (and its own), so a file written for Glance loads and an
option neither knows stays an error.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import sys
import textwrap
import types
import warnings

# glance_store's cinder driver imports os-brick and cinderclient at module level; its options
# need neither, so stand-ins are enough when they are not installed.
class _StandIn(types.ModuleType):
    __path__: list[str] = []

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (Exception,), {})


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    ROOTS = ("os_brick", "cinderclient")

    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name.split(".")[0] in self.ROOTS:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return _StandIn(spec.name)

    def exec_module(self, module):  # type: ignore[no-untyped-def]
        pass


for _root in _StandInFinder.ROOTS:
    try:
        importlib.import_module(_root)
    except ImportError:
        sys.meta_path.append(_StandInFinder())
        break
warnings.simplefilter("ignore")

from keystoneauth1 import loading  # noqa: E402
from oslo_config import generator  # noqa: E402

NAMESPACES = (
    "glance.api", "glance.store", "glance.multi_store", "oslo.concurrency", "oslo.messaging", "oslo.db", "oslo.policy",
    "keystonemiddleware.auth_token", "oslo.log", "oslo.middleware.cors", "oslo.middleware.healthcheck",
    "oslo.middleware.http_proxy_to_wsgi", "oslo.limit", "osprofiler",
    "glance",  # glance-image-import.conf
)
# enabled_backends types and the glance_store driver each one loads.
STORE_DRIVERS = {"file": "file", "rbd": "rbd", "http": "http", "cinder": "cinder", "swift": "glance.store.swift.Store",
                 "s3": "glance.store.s3.Store", "vmware": "glance.store.vmware_datastore.Store"}
# keystonemiddleware reads the options of the auth_type's plugin from [keystone_authtoken] too.
KEYSTONE_PLUGINS = ("password", "v3password", "v3applicationcredential", "token", "v3token", "admin_token")
# The cinder driver calls os_brick.setup(CONF), which registers [os_brick] (os-brick 7.1, os_brick/opts.py).
OS_BRICK_OPTIONS = ("lock_path", "wait_mpath_device_attempts", "wait_mpath_device_interval")
# glance_store registers these in os_glance_staging_store and os_glance_tasks_store (multi_backend.py).
RESERVED_STORE_OPTIONS = ("filesystem_store_datadir", "filesystem_store_datadirs", "filesystem_store_metadata_file",
                          "filesystem_store_file_perm", "filesystem_store_chunk_size", "filesystem_thin_provisioning")


def _names(opts: list) -> set[str]:
    return {opt.dest for opt in opts}


def _frozenset(names: set[str]) -> str:
    items = textwrap.wrap(", ".join(repr(n) for n in sorted(names)), 100, initial_indent=" " * 8,
                          subsequent_indent=" " * 8, break_on_hyphens=False, break_long_words=False)
    return "frozenset({\n" + "\n".join(items) + ",\n    })"


def main() -> None:
    sections: dict[str, set[str]] = {}
    deprecated: dict[tuple[str, str], tuple[str, str]] = {}
    for namespace in NAMESPACES:
        for group, opts in generator._list_opts([namespace])[0][1]:
            name = getattr(group, "name", group) or "DEFAULT"
            if name in STORE_DRIVERS or name.startswith("glance.store."):
                continue  # glance.multi_store lists each driver's options under a driver name: see STORE_DRIVERS
            sections.setdefault(name, set()).update(_names(opts))
            for opt in opts:
                for old in opt.deprecated_opts:
                    old_group = old.group or name
                    if old.name and (old_group, old.name.replace("-", "_")) != (name, opt.dest):
                        deprecated[(old_group, old.name.replace("-", "_"))] = (name, opt.dest)
    for plugin in KEYSTONE_PLUGINS:
        sections["keystone_authtoken"].update(o.dest for o in loading.get_plugin_loader(plugin).get_options())
    # oslo.limit lists the password plugin's options but not auth_type and auth_section, which choose it.
    sections["oslo_limit"].update(o.dest for o in loading.get_auth_common_conf_options())
    sections["os_brick"] = set(OS_BRICK_OPTIONS)
    for reserved in ("os_glance_staging_store", "os_glance_tasks_store"):
        sections[reserved] = set(RESERVED_STORE_OPTIONS)

    from glance_store.driver import _MULTI_BACKEND_OPTS as MULTI_BACKEND_OPTIONS

    # The swift entry point is a factory function carrying OPTIONS, the others are classes.
    entry_points = {e.name: e for e in importlib.metadata.entry_points(group="glance_store.drivers")}
    stores: dict[str, set[str]] = {}
    for kind, entry in STORE_DRIVERS.items():
        cls = entry_points[entry].load()
        stores[kind] = _names(cls.OPTIONS or []) | _names(MULTI_BACKEND_OPTIONS)

    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in ("glance", "glance_store", "oslo.config"))
    out = [
        '"""The option names of a Glance glance-api.conf and glance-image-import.conf, by section.',
        "",
        "Generated by scripts/glance_option_names.py from",
        versions + "; do not edit.",
        "streamd's configuration loader accepts these names (honouring the options it implements",
        "and naming the others in its start-up warning) and refuses any other.",
        '"""',
        "",
        "# Fixed sections: section -> option names.",
        "SECTIONS: dict[str, frozenset[str]] = {",
    ]
    for name in sorted(sections, key=lambda s: (s != "DEFAULT", s)):
        out.append(f"    {name!r}: {_frozenset(sections[name])},")
    out += ["}", "", "# The section of a store named in enabled_backends: store type -> option names.",
            "STORE_SECTIONS: dict[str, frozenset[str]] = {"]
    for kind in STORE_DRIVERS:
        out.append(f"    {kind!r}: {_frozenset(stores[kind])},")
    out += ["}", "", "# Deprecated spellings oslo.config still reads: (section, old name) -> (section, name).",
            "DEPRECATED: dict[tuple[str, str], tuple[str, str]] = {"]
    for old in sorted(deprecated):
        out.append(f"    {old!r}: {deprecated[old]!r},")
    out += ["}", ""]
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
