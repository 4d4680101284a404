"""Command line: ``streamd serve``, ``streamd scrub``, ``streamd check-config``, ``streamd config-example``,
``streamd policy-sample``, ``streamd --version``, and the metadata definitions verbs
``streamd metadefs-load|metadefs-unload|metadefs-export`` (glance-manage's ``db_load_metadefs``,
``db_unload_metadefs``, ``db_export_metadefs``; ``streamd-manage``, in ``manage.py``, has glance-manage's
own spellings of them)."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__, kernels
from .config import Config, load_config, render_example
from .errors import ConfigError, StreamdError


def _version() -> str:
    return f"streamd {__version__} (kernels: {kernels.describe()})"


def main(argv: list[str] | None = None) -> int:
    # Raw text: the version line is printed as one line, however narrow the terminal.
    parser = argparse.ArgumentParser(prog="streamd", description="OpenStack Images API v2 data plane",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API daemon")
    serve.add_argument("--config", metavar="FILE", help="ini file in the shape of glance-api.conf")
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", metavar="FILE", required=True)
    scrub = sub.add_parser("scrub", help="delete the data of pending_delete images once (glance-scrubber) and exit",
                           description="Delete the data of images in pending_delete whose scrub_time has "
                           "passed, mark them deleted and exit; for cron on nodes that run no daemon. "
                           "Safe beside daemons and other scrubbers sharing the catalogue.")
    scrub.add_argument("--config", metavar="FILE", help="ini file in the shape of glance-api.conf")
    scrub.add_argument("--restore", metavar="IMAGE_ID",
                       help="bring the pending_delete image back to active instead (only pending_delete images)")
    scrub.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub.add_parser("config-example", help="print the documented example configuration")
    sub.add_parser("policy-sample", help="print Glance's default policy rules as a commented policy.yaml")
    load = sub.add_parser("metadefs-load", help="load metadata definition files into the catalogue "
                                                "(glance-manage db_load_metadefs)")
    load.add_argument("path", nargs="?", help="a definition file or a directory of them "
                                              "(default: Glance's published definitions, shipped with streamd)")
    load.add_argument("--merge", action="store_true", help="add what is new to namespaces that exist")
    load.add_argument("--prefer-new", action="store_true", help="with --merge: also update what exists")
    load.add_argument("--overwrite", action="store_true", help="replace namespaces that exist")
    unload = sub.add_parser("metadefs-unload", help="delete every metadata definition (glance-manage db_unload_metadefs)")
    export = sub.add_parser("metadefs-export", help="write every namespace to a definition file "
                                                    "(glance-manage db_export_metadefs)")
    export.add_argument("path", help="directory to write the files into")
    for verb in (load, unload, export):
        verb.add_argument("--config", metavar="FILE", help="the daemon's configuration (for its catalogue)")
    args = parser.parse_args(argv)

    if args.command == "config-example":
        sys.stdout.write(render_example())
        return 0
    if args.command == "policy-sample":
        from .policy.sample import render_sample

        sys.stdout.write(render_sample())
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"streamd: {exc}", file=sys.stderr)
        return 2
    if args.command.startswith("metadefs-"):
        import asyncio

        try:
            print(asyncio.run(_metadefs(args, config)))
        except StreamdError as exc:
            print(f"streamd: {exc.message}", file=sys.stderr)
            return 1
        return 0
    if args.command == "check-config":
        from .policy import PolicyEnforcer, protections_from_config, settings_from_config

        try:
            # The policy file and the property protection file too: a broken one fails the start.
            protections_from_config(config, PolicyEnforcer(settings_from_config(config)))
        except ConfigError as exc:
            print(f"streamd: {exc}", file=sys.stderr)
            return 2
        # Ignored options are no error: the same warning as at start-up, and success.
        if config.warning:
            print(f"streamd: warning: {config.warning}", file=sys.stderr)
        print(f"{', '.join(config.sources)}: OK")
        return 0

    from .logs import configure

    configure(args.log_level, use_json=config.default.use_json)
    if args.command == "scrub":
        return _scrub(config, args.restore)
    if config.warning:
        logging.getLogger("streamd").warning("%s", config.warning)
    from .daemon import run

    try:
        run(config)
    except StreamdError as exc:
        logging.getLogger("streamd").error("%s", exc.message)
        return 1
    return 0


def _scrub(config: Config, restore: str | None) -> int:
    """``streamd scrub [--restore IMAGE_ID]``: 0 done, 1 an image could not be scrubbed or restored."""
    import asyncio

    from .services import open_scrubber

    async def run() -> int:
        async with open_scrubber(config) as scrubber:
            if restore is not None:
                await scrubber.catalog.restore_image(restore)
                print(f"Image {restore} restored to active.")
                return 0
            report = await scrubber.run_once()
            for image_id in report.scrubbed:
                print(f"scrubbed {image_id}")
            for image_id in report.failed:
                print(f"streamd scrub: image {image_id} could not be scrubbed; it stays in pending_delete",
                      file=sys.stderr)
            return 1 if report.failed else 0

    try:
        return asyncio.run(run())
    except StreamdError as exc:
        print(f"streamd scrub: ERROR: {exc.message}", file=sys.stderr)
        return 1


async def _metadefs(args: argparse.Namespace, config: Config) -> str:
    verb = args.command[len("metadefs-"):]
    return await run_metadefs(config, verb, path=getattr(args, "path", None), merge=getattr(args, "merge", False),
                              prefer_new=getattr(args, "prefer_new", False),
                              overwrite=getattr(args, "overwrite", False))


async def run_metadefs(config: Config, verb: str, *, path: str | None = None, merge: bool = False,
                       prefer_new: bool = False, overwrite: bool = False) -> str:
    """One metadefs verb (``load``, ``unload`` or ``export``) on the catalogue the configuration
    names (the daemon may be running); what to print. ``streamd metadefs-*`` and
    ``streamd-manage db *_metadefs`` both run it."""
    from pathlib import Path

    from .catalog import Catalog
    from .catalog.metadef_files import read_definitions, write_definitions

    catalog = await Catalog.open(config.database_url, busy_timeout=config.database.busy_timeout)
    try:
        if verb == "load":
            documents = read_definitions(Path(path) if path else None)
            loaded = await catalog.load_metadefs(documents, merge=merge, prefer_new=prefer_new, overwrite=overwrite)
            return f"loaded {len(loaded)} of {len(documents)} namespaces"
        if verb == "unload":
            await catalog.unload_metadefs()
            return "metadata definitions deleted"
        assert verb == "export" and path is not None
        written = write_definitions(Path(path), await catalog.export_metadefs())
        return f"exported {len(written)} namespaces to {path}"
    finally:
        await catalog.close()


# -- streamd-cache-manage (streamd/cache_manage.py; this name is the entry point of older installs) ------

def cache_manage(argv: list[str] | None = None) -> int:
    """``streamd-cache-manage``: see :mod:`streamd.cache_manage`."""
    from .cache_manage import main as cache_manage_main

    return cache_manage_main(argv)


if __name__ == "__main__":
    sys.exit(main())
