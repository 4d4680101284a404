"""Command line: ``streamd serve``, ``streamd config-example``, ``streamd --version``."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__, kernels
from .config import load_config, render_example
from .errors import ConfigError


def _version() -> str:
    return f"streamd {__version__} (zero scan: {kernels.describe()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamd", description="OpenStack Images API v2 data plane")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API daemon")
    serve.add_argument("--config", metavar="FILE", help="ini file in the shape of glance-api.conf")
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", metavar="FILE", required=True)
    sub.add_parser("config-example", help="print the documented example configuration")
    args = parser.parse_args(argv)

    if args.command == "config-example":
        sys.stdout.write(render_example())
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"streamd: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: OK")
        return 0

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from .daemon import run

    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
