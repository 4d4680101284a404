"""``streamd-manage``: glance-manage's verbs on streamd's catalogue.

``streamd-manage [--config FILE] db ACTION ...`` with glance-manage's actions and spellings:
``version``, ``upgrade [VERSION]``, ``version_control [VERSION]``, ``sync [VERSION]``, ``check``,
``purge``, ``purge_images_table``, ``load_metadefs``, ``unload_metadefs``, ``export_metadefs``; and
glance-manage's legacy top-level forms ``db_version``, ``db_upgrade``, ``db_version_control``,
``db_sync``, ``db_check``, ``db_load_metadefs [PATH [MERGE [PREFER_NEW [OVERWRITE]]]]``,
``db_unload_metadefs`` and ``db_export_metadefs [PATH]`` (glance-manage accepts no dashed spellings,
``db-sync``, and neither does this). glance-manage's ``db expand``, ``db migrate`` and
``db contract`` (rolling upgrades on MySQL) have no counterpart: streamd's migrations are one line.

The configuration is the daemon's (``--config``, found as ``streamd serve`` finds it); the catalogue
is its ``[database] connection``, SQLite or PostgreSQL. Exit codes as glance-manage's: 0 done, 1 an
error (said on stderr), 2 a usage error, and for ``db check`` 3 when upgrades are pending.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from .config import Config, load_config
from .errors import ConfigError, StreamdError

if TYPE_CHECKING:
    from .catalog import Catalog

PROG = "streamd-manage"
# Glance's --max_rows bound (glance.db.sqlalchemy.api._validate_db_int) and its defaults.
MAX_INT = 2 ** 31 - 1
FIRST_REVISION = "0001"
EXIT_PENDING = 3  # db check: glance-manage's "run db expand" (its first step of an upgrade)


class Failed(Exception):
    """A verb that cannot go on: the message for stderr, exit 1 (glance-manage's sys.exit(msg))."""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "--config-file", metavar="FILE", default=argparse.SUPPRESS,
                        help="the daemon's configuration (default: as streamd serve finds it)")
    parser = argparse.ArgumentParser(prog=PROG, parents=[common],
                                     description="Manage streamd's catalogue database (glance-manage's verbs).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{db,db_version,...}")
    db = commands.add_parser("db", parents=[common], help="database actions")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str, *,
               into: "argparse._SubParsersAction[argparse.ArgumentParser]" = actions) -> argparse.ArgumentParser:
        return into.add_parser(name, parents=[common], help=text, description=text)

    action("version", "print the database's current migration level")
    action("check", "report any pending database upgrades (exit code 3 if there are)")
    for name, text in (("upgrade", "upgrade the database's migration level (default: the newest)"),
                       ("version_control", "place a database under migration control at a revision "
                                           "without migrating (default: the first)"),
                       ("sync", "perform a complete database migration")):
        verb = action(name, text)
        verb.add_argument("version_arg", nargs="?", metavar="VERSION")
        verb.add_argument("--version", metavar="<version>", help="database version")
    for name, days, text in (("purge", 30, "purge deleted rows older than a given age: what is kept of deleted "
                                          "images (never their images rows) and expired tasks"),
                             ("purge_images_table", 180, "purge the rows of images deleted longer ago than "
                                                         "a given age")):
        verb = action(name, text)
        # glance-manage also takes them in order, as words (its action_args): checked as it checks them.
        verb.add_argument("age_arg", nargs="?", metavar="AGE_IN_DAYS")
        verb.add_argument("rows_arg", nargs="?", metavar="MAX_ROWS")
        verb.add_argument("--age_in_days", type=int, default=days,
                          help=f"purge deleted rows older than age in days (default {days})")
        verb.add_argument("--max_rows", type=int, default=100,
                          help="limit number of records to delete; all deleted rows are purged if it equals -1 "
                               "(default 100)")
    load = action("load_metadefs", "load metadefinition json files to database")
    load.add_argument("path_arg", nargs="?", metavar="PATH")
    load.add_argument("--path", metavar="<path>",
                      help="path to the directory or file where json metadata is stored "
                           "(default: Glance's published definitions, shipped with streamd)")
    load.add_argument("--merge", action="store_true", help="merge files with data that is in the database")
    load.add_argument("--prefer_new", action="store_true", help="with --merge: prefer new metadata over existing")
    load.add_argument("--overwrite", action="store_true", help="with --merge: drop and rewrite metadata")
    action("unload_metadefs", "unload metadefinitions from database")
    export = action("export_metadefs", "export metadefinitions data from database to files")
    export.add_argument("path_arg", nargs="?", metavar="PATH")
    export.add_argument("--path", metavar="<path>", help="path to the directory where json metadata files "
                                                          "should be saved")

    # glance-manage's legacy forms: positional arguments only, as glance-manage takes them.
    for name in ("version", "check", "unload_metadefs"):
        action(f"db_{name}", f"= db {name}", into=commands)
    for name in ("upgrade", "version_control", "sync"):
        action(f"db_{name}", f"= db {name}", into=commands).add_argument("version_arg", nargs="?",
                                                                          metavar="VERSION")
    legacy_load = action("db_load_metadefs", "= db load_metadefs (given at all, MERGE, PREFER_NEW and OVERWRITE "
                                             "are on, as in glance-manage)", into=commands)
    for name in ("path_arg", "merge", "prefer_new", "overwrite"):
        legacy_load.add_argument(name, nargs="?", metavar=name.removesuffix("_arg").upper())
    action("db_export_metadefs", "= db export_metadefs", into=commands).add_argument("path_arg", nargs="?",
                                                                                    metavar="PATH")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verb = args.action if args.command == "db" else args.command[len("db_"):]
    try:
        config = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    handler = _VERBS[verb]
    try:
        return asyncio.run(handler(config, args))
    except Failed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except StreamdError as exc:
        print(f"{PROG}: ERROR: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:  # the database or Alembic refusing: said, not a traceback
        from alembic.util import CommandError
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, (CommandError, SQLAlchemyError, OSError)):
            print(f"{PROG}: ERROR: {exc}", file=sys.stderr)
            return 1
        raise


async def _with_catalog(config: Config, run: Callable[["Catalog"], Awaitable[int]]) -> int:
    from .catalog import Catalog

    catalog = await Catalog.open(config.database_url, busy_timeout=config.database.busy_timeout, migrate=False)
    try:
        return await run(catalog)
    finally:
        await catalog.close()


def _version_of(args: argparse.Namespace) -> str | None:
    return getattr(args, "version", None) or getattr(args, "version_arg", None)


async def _version(config: Config, args: argparse.Namespace) -> int:
    async def run(catalog: "Catalog") -> int:
        heads = await catalog.schema_revisions()
        if heads:
            print("\n".join(heads))
        else:
            print(f'Database is not under migration control, please run "{PROG} db sync" to place the '
                  "database under alembic migration control.")
        return 0
    return await _with_catalog(config, run)


async def _check(config: Config, args: argparse.Namespace) -> int:
    async def run(catalog: "Catalog") -> int:
        current = set(await catalog.schema_revisions())
        if set(catalog.head_revisions()) <= current:
            print("Database is up to date. No upgrades needed.")
            return 0
        print(f"Your database is not up to date. Your next step is to run `{PROG} db sync`.")
        return EXIT_PENDING
    return await _with_catalog(config, run)


async def _upgrade(config: Config, args: argparse.Namespace) -> int:
    version = _version_of(args) or "heads"

    async def run(catalog: "Catalog") -> int:
        await catalog.migrate(version)
        revisions = ", ".join(await catalog.schema_revisions())
        if version == "heads":
            print(f"Upgraded database, current revision(s): {revisions}")
        else:
            print(f"Upgraded database to: {version}, current revision(s): {revisions}")
        return 0
    return await _with_catalog(config, run)


async def _version_control(config: Config, args: argparse.Namespace) -> int:
    version = _version_of(args) or FIRST_REVISION

    async def run(catalog: "Catalog") -> int:
        await catalog.stamp(version)
        print(f"Placed database under migration control at revision: {version}")
        return 0
    return await _with_catalog(config, run)


async def _sync(config: Config, args: argparse.Namespace) -> int:
    version = _version_of(args) or "heads"

    async def run(catalog: "Catalog") -> int:
        if set(catalog.head_revisions()) <= set(await catalog.schema_revisions()):
            print("Database is up to date. No migrations needed.")
            return 0
        await catalog.migrate(version)
        print("Database is synced successfully.")
        return 0
    return await _with_catalog(config, run)


def _purge_limits(age_in_days: int, max_rows: int) -> None:
    """glance-manage's checks, in its order and words."""
    if age_in_days < 0:
        raise Failed("Must supply a non-negative value for age.")
    if age_in_days >= int(time.time()) / 86400:
        raise Failed("Maximal age is count of days since epoch.")
    if max_rows < -1:
        raise Failed("Minimal rows limit is -1.")
    if max_rows > MAX_INT:
        raise Failed(f"'max_rows' value out of range, must not exceed {MAX_INT}.")


def _int_word(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise Failed(f"Invalid int value for {name}: {value}") from None


async def _purge(config: Config, args: argparse.Namespace) -> int:
    if args.age_arg is not None:
        args.age_in_days = _int_word(args.age_arg, "age_in_days")
    if args.rows_arg is not None:
        args.max_rows = _int_word(args.rows_arg, "max_rows")
    _purge_limits(args.age_in_days, args.max_rows)
    images_only = args.action == "purge_images_table"

    async def run(catalog: "Catalog") -> int:
        if not set(catalog.head_revisions()) <= set(await catalog.schema_revisions()):
            raise Failed(f"Purge command failed: the database is not up to date; run `{PROG} db sync` first.")
        if images_only:
            counts = {"images": await catalog.purge_images_table(
                args.age_in_days, args.max_rows)}
        else:
            counts = await catalog.purge_deleted(args.age_in_days, args.max_rows)
        for table, rows in counts.items():
            print(f"Deleted {rows} row(s) from table {table}")
        return 0
    return await _with_catalog(config, run)


async def _metadefs(config: Config, args: argparse.Namespace) -> int:
    from .cli import run_metadefs

    verb = args.action if args.command == "db" else args.command[len("db_"):]
    path = getattr(args, "path", None) or getattr(args, "path_arg", None)
    if verb == "export_metadefs" and not path:
        raise Failed(f"{PROG}: export_metadefs needs the directory to write into (--path PATH)")
    print(await run_metadefs(config, verb.removesuffix("_metadefs"), path=path,
                             merge=bool(getattr(args, "merge", False)),
                             prefer_new=bool(getattr(args, "prefer_new", False)),
                             overwrite=bool(getattr(args, "overwrite", False))))
    return 0


_VERBS: dict[str, Callable[[Config, argparse.Namespace], Awaitable[int]]] = {
    "version": _version, "check": _check, "upgrade": _upgrade, "version_control": _version_control, "sync": _sync,
    "purge": _purge, "purge_images_table": _purge, "load_metadefs": _metadefs, "unload_metadefs": _metadefs,
    "export_metadefs": _metadefs,
}


if __name__ == "__main__":
    sys.exit(main())
