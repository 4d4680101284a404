"""``streamd-cache-manage``: glance-cache-manage's verbs (and a few of ours), one subcommand each.

Two ways to reach a daemon:

- the local admin socket (``--socket``, or the one ``--config`` names; the default), which
  speaks every verb, ``verify`` and ``stats`` included, and reports a fill's progress;
- another node's HTTP cache API (``--host``/``--port``, glance-cache-manage's spellings):
  ``GET/DELETE /v2/cache``, ``PUT/DELETE /v2/cache/{image_id}``, ``POST /v2/cache/prune|clean``
  (Glance's API 2.14+). Authentication as glance-cache-manage: ``--os-auth-token``, or a token
  Keystone issues for ``--os-username``/``--os-password`` at ``--os-auth-url``; with neither,
  no token is sent (a noauth daemon), with the identity headers ``--os-project-id``,
  ``--os-user-id`` and ``--os-roles`` name when given.

Exit codes: 0 ok, 1 refused, 2 usage, 3 daemon unreachable. ``--json`` prints the answers
raw (``{"ok": ..., "result"|"error": ...}``); the tables show sizes and ages for people.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any, Sequence

from .config import load_config
from .errors import ConfigError

PROG = "streamd-cache-manage"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# verb -> (one-line help, takes image ids, description for its own --help)
VERBS: dict[str, tuple[str, bool, str]] = {
    "list-cached": ("list the images in the cache", False,
                    "List the cached images: size, hits, last access and last modification (with their age)."),
    "list-queued": ("list the images queued for caching", False, "List the images queued for caching."),
    "queue-image": ("queue image(s) for caching (--now: cache them right away)", True,
                    "Queue active image(s) for caching. With --now, wait until each is cached (a progress "
                    "bar on a terminal)."),
    "delete-cached-image": ("remove image(s) from the cache", True, "Remove image(s) from the cache."),
    "delete-all-cached-images": ("remove every image from the cache", False, "Remove every image from the cache."),
    "delete-queued-image": ("remove image(s) from the queue", True, "Remove image(s) from the caching queue."),
    "delete-all-queued-images": ("empty the queue", False, "Remove every image from the caching queue."),
    "prune": ("evict least recently used images until the cache fits image_cache_max_size", False,
              "Evict least recently used images until the cache fits image_cache_max_size."),
    "clean": ("remove stalled partial fills and invalid files", False,
              "Remove stalled partial fills and invalid files."),
    "verify": ("re-hash cached image(s) against the catalogue; corrupt ones are evicted", True,
               "Re-hash cached image(s) against the catalogue; corrupt ones are evicted (admin socket only)."),
    "stats": ("store reads and fills in flight", False, "Store reads and fills in flight (admin socket only)."),
}
# What the HTTP cache API has no route for.
SOCKET_ONLY = {"verify", "stats"}
# For backwards compatibility (streamd.cli.CACHE_VERBS).
CACHE_VERBS = {verb: info[0] for verb, info in VERBS.items()}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


# -- formatting ---------------------------------------------------------------------------------------

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: int | None) -> str:
    """1023 -> '1023 B', 100001 -> '97.7 KiB', 3 << 30 -> '3.0 GiB'."""
    if n is None:
        return "N/A"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def human_age(then: float | None, now: float | None = None) -> str:
    """How long ago ``then`` (epoch seconds) was: 'just now', '3 minutes ago', '1 day ago'."""
    if not then:
        return "never"
    seconds = (time.time() if now is None else now) - then
    if seconds < 0:
        return "in the future"
    if seconds < 5:
        return "just now"
    for size, name in ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {name}{'' if count == 1 else 's'} ago"
    return "just now"  # pragma: no cover - unreachable


def _format_time(value: float | None, now: float | None = None) -> str:
    if not value:
        return "N/A"
    stamp = datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp} ({human_age(value, now)})"


def _table(headers: list[str], rows: list[list[str]], right: Sequence[int] = ()) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def cells(r: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"

    return "\n".join([line, cells(headers), line, *[cells(r) for r in rows], line])


def render(verb: str, result: object, now: float | None = None) -> str:
    """The human form of one answer's ``result``."""
    if verb == "list-cached":
        assert isinstance(result, list)
        if not result:
            return "No cached images."
        rows = [[e["image_id"], _format_time(e["last_accessed"], now), _format_time(e["last_modified"], now),
                 f"{human_size(e['size'])} ({e['size']})", str(e["hits"])] for e in result]
        total = sum(int(e["size"]) for e in result)
        return f"Found {len(rows)} cached image(s).\n" + _table(
            ["ID", "Last Accessed (UTC)", "Last Modified (UTC)", "Size", "Hits"], rows, right=(3, 4)) + \
            f"\n{human_size(total)} ({total} bytes) in all."
    if verb == "list-queued":
        assert isinstance(result, list)
        if not result:
            return "No queued images."
        if all(e.get("queued_at") is None for e in result):  # the HTTP cache API lists ids only
            return f"Found {len(result)} queued image(s).\n" + _table(["ID"], [[e["image_id"]] for e in result])
        rows = [[e["image_id"], _format_time(e["queued_at"], now)] for e in result]
        return f"Found {len(rows)} queued image(s).\n" + _table(["ID", "Queued At (UTC)"], rows)
    assert isinstance(result, dict)
    # One line of counts; exact numbers (scripts read them), sizes for people are in the tables.
    return ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in result.items())


def progress_bar(done: int, total: int | None, width: int = 30, elapsed: float | None = None) -> str:
    """One line of a progress bar: ``[#########.........]  45%  4.5 MiB/10.0 MiB  2s``; with no
    known total, the bytes so far (or the time waited)."""
    tail = f"  {elapsed:.0f}s" if elapsed is not None else ""
    if total:
        fraction = min(1.0, max(0.0, done / total))
        filled = int(round(fraction * width))
        return (f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%  "
                f"{human_size(done)}/{human_size(total)}{tail}")
    return f"[{'?' * width}] {human_size(done) if done else 'waiting'}{tail}"


class Bar:
    """A progress bar redrawn in place on a terminal (``\\r``), finished with a newline."""

    def __init__(self, stream: IO[str], label: str) -> None:
        self.stream = stream
        self.label = label
        self.started = time.monotonic()
        self.drawn = False
        self.total: int | None = None

    def update(self, done: int, total: int | None) -> None:
        self.total = total or self.total
        line = f"{self.label} {progress_bar(done, total, elapsed=time.monotonic() - self.started)}"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


# -- the command line ---------------------------------------------------------------------------------

def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every verb takes, before or after it. On the verbs' parsers their defaults
    are suppressed so that a value given before the verb is not overwritten."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    local = parser.add_argument_group("the daemon on this host (admin socket)")
    local.add_argument("--config", metavar="FILE", default=d(None),
                       help="the daemon's configuration (to find its admin socket)")
    local.add_argument("--socket", metavar="PATH", default=d(None), help="the admin socket (overrides --config)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", default=d(False), help="print the daemon's answers as JSON")
    # glance-cache-manage asks before deleting unless -f; streamd-cache-manage never asked (scripts
    # rely on it), so -f is accepted for glance-cache-manage's command lines and changes nothing.
    out.add_argument("-f", "--force", action="store_true", default=d(False),
                     help="accepted for glance-cache-manage's sake: nothing is asked anyway")
    out.add_argument("-v", "--verbose", action="store_true", default=d(False), help="say how long it took")
    out.add_argument("-d", "--debug", action="store_true", default=d(False), help="print the requests made")
    remote = parser.add_argument_group("another node, over its HTTP cache API (glance-cache-manage's options)")
    remote.add_argument("-H", "--host", metavar="ADDRESS", default=d(None),
                        help="the node's API address (or a URL, http[s]://host:port); selects the HTTP API")
    remote.add_argument("-p", "--port", metavar="PORT", type=int, default=d(None),
                        help="the port its API listens on (default 9292); selects the HTTP API")
    remote.add_argument("-k", "--insecure", action="store_true", default=d(False),
                        help="do not verify the node's TLS certificate (https URLs)")
    remote.add_argument("--timeout", metavar="SECONDS", type=float, default=d(600.0),
                        help="how long to wait for an answer, and for queue-image --now (default 600)")
    for flag, env, what in (
            ("--os-auth-token", "OS_AUTH_TOKEN", "a token to send as X-Auth-Token"),
            ("--os-username", "OS_USERNAME", "Keystone user to get a token for"),
            ("--os-password", "OS_PASSWORD", "its password"),
            ("--os-project-name", "OS_PROJECT_NAME", "the project to scope the token to"),
            ("--os-project-id", "OS_PROJECT_ID", "the project (by id) to scope the token to; with no token, "
                                                 "sent as X-Project-Id (noauth)"),
            ("--os-user-domain-id", "OS_USER_DOMAIN_ID", "the user's domain"),
            ("--os-project-domain-id", "OS_PROJECT_DOMAIN_ID", "the project's domain"),
            ("--os-domain-id", "OS_DOMAIN_ID", "the domain of both when not given apart (default: default)"),
            ("--os-auth-url", "OS_AUTH_URL", "Keystone's URL (/v3 is added when missing)"),
            ("--os-region-name", "OS_REGION_NAME", "accepted for glance-cache-manage's sake; not used")):
        remote.add_argument(flag, metavar=flag[5:].upper().replace("-", "_"), default=d(_env(env)),
                            help=f"{what} (default: env[{env}])")
    remote.add_argument("--os-user-id", metavar="USER_ID", default=d(None),
                        help="with no token: sent as X-User-Id (noauth)")
    remote.add_argument("--os-roles", metavar="ROLES", default=d(None),
                        help="with no token: sent as X-Roles (noauth), e.g. admin,member,reader")
    # glance-cache-manage's older spellings.
    for flags, dest in ((("-A", "--os_auth_token", "--auth_token"), "os_auth_token"),
                        (("-I", "--os_username"), "os_username"), (("-K", "--os_password"), "os_password"),
                        (("-T", "--os_project_name"), "os_project_name"), (("-N", "--os_auth_url"), "os_auth_url"),
                        (("-R", "--os_region_name"), "os_region_name")):
        remote.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    remote.add_argument("-S", "--os_auth_strategy", dest="os_auth_strategy", metavar="STRATEGY",
                        choices=("keystone", "noauth"), default=d(None),
                        help="keystone or noauth (default: keystone when a token or a user is given)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Manage the image cache of a streamd daemon: this host's over its admin socket, "
                    "or another node's over its HTTP cache API (--host/--port).",
        epilog=f"`{PROG} VERB --help` describes one verb; options may come before or after the verb.")
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs: dict[str, argparse.ArgumentParser] = {}
    for verb, (summary, takes_ids, description) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=summary, description=description)
        _add_common(verb_parser, suppress=True)
        if takes_ids:
            verb_parser.add_argument("image_ids", nargs="+", metavar="IMAGE_ID")
        if verb == "queue-image":
            verb_parser.add_argument("--now", action="store_true", default=False,
                                     help="cache right away, and wait until it is cached")
        verbs[verb] = verb_parser
    helper = sub.add_parser("help", help="describe one verb (glance-cache-manage help VERB)")
    helper.add_argument("topic", nargs="?", choices=sorted(VERBS), metavar="VERB")
    return parser, verbs


def _valued_options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions if action.nargs != 0 for flag in action.option_strings}


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The verb is the first word that is not an option's value; everything else, in any order,
    is parsed by the verb's own parser (so ``queue-image --now ID`` and ``--json list-cached``)."""
    parser, verbs = build_parser()
    valued = _valued_options(parser)
    words = list(argv)
    position = None
    skip = False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word == "--":
            break
        if word.startswith("-"):
            skip = word in valued  # --host X (not --host=X)
            continue
        position = i
        break
    if position is None or words[position] not in verbs:
        if position is not None and words[position] == "help":
            args = parser.parse_args(words)
            (verbs[args.topic] if args.topic else parser).print_help()
            raise SystemExit(0)
        parser.parse_args(words)  # a usage error (no verb, an unknown one) or --help: exits
        raise SystemExit(EXIT_USAGE)  # pragma: no cover - parse_args exits above
    verb = words[position]
    verb_parser = verbs[verb]
    namespace = argparse.Namespace(verb=verb, now=False, image_ids=[])
    # The main parser's defaults first; the verb's parser only sets what is given.
    for action in parser._actions:
        if action.dest not in ("help", "verb") and action.default is not argparse.SUPPRESS:
            setattr(namespace, action.dest, action.default)
    args = verb_parser.parse_intermixed_args(words[:position] + words[position + 1:], namespace)
    args.usage_error = verb_parser.error
    return args


# -- the admin socket ---------------------------------------------------------------------------------

class Unreachable(Exception):
    pass


class SocketClient:
    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        try:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))
        except OSError as exc:
            raise Unreachable(f"cannot reach the daemon at {path}: {exc.strerror or exc}") from exc
        self.stream = self.sock.makefile("rwb")

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            self.stream.write(json.dumps(request).encode() + b"\n")
            self.stream.flush()
            line = self.stream.readline()
        except OSError as exc:
            raise Unreachable(f"the daemon at {self.path} stopped answering: {exc}") from exc
        if not line:
            raise Unreachable("the daemon closed the connection")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def run(self, verb: str, image_id: str | None, now: bool, bar: Bar | None) -> dict[str, Any]:
        request: dict[str, Any] = {"command": verb}
        if image_id is not None:
            request.update(image_id=image_id, now=now)
        if bar is None or image_id is None:
            return self.ask(request)
        # The fill's progress, asked on a second connection while this one waits for the answer.
        done = threading.Event()

        def watch() -> None:
            try:
                watcher = SocketClient(self.path, 5)
            except Unreachable:
                return
            try:
                while not done.wait(0.1):
                    answer = watcher.ask({"command": "fill-progress", "image_id": image_id})
                    if answer.get("ok") and answer["result"].get("written") is not None and not done.is_set():
                        bar.update(answer["result"]["written"], answer["result"]["size"])
            except (Unreachable, ValueError, KeyError):
                pass
            finally:
                watcher.close()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            answer = self.ask(request)
        finally:
            done.set()
            thread.join(2)
        if answer.get("ok") and answer["result"].get("cached"):
            size = bar.total
            if size is None:  # cached before the first look: its size from the listing
                listing = self.ask({"command": "list-cached"})
                size = next((e["size"] for e in listing.get("result") or [] if e["image_id"] == image_id), None)
            if size is not None:
                bar.update(size, size)
        return answer


# -- the HTTP cache API --------------------------------------------------------------------------------

class HttpClient:
    def __init__(self, args: argparse.Namespace) -> None:
        host = args.host or "0.0.0.0"
        if "://" in host:
            self.base = host.rstrip("/")
        else:
            self.base = f"http://{host}:{args.port or 9292}"
        self.timeout = args.timeout
        self.debug = args.debug
        self.context = None
        if args.insecure:
            self.context = ssl.create_default_context()
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        self.headers: dict[str, str] = {}
        strategy = args.os_auth_strategy or ("keystone" if (args.os_auth_token or args.os_username) else "noauth")
        if strategy == "keystone":
            self.headers["X-Auth-Token"] = args.os_auth_token or self._keystone_token(args)
        else:
            for header, value in (("X-Project-Id", args.os_project_id), ("X-User-Id", args.os_user_id),
                                  ("X-Roles", args.os_roles)):
                if value:
                    self.headers[header] = value

    def _keystone_token(self, args: argparse.Namespace) -> str:
        if not (args.os_username and args.os_password and args.os_auth_url):
            raise ConfigError(["keystone authentication needs --os-auth-token, or --os-username, --os-password "
                               "and --os-auth-url"])
        url = args.os_auth_url.rstrip("/")
        if "/v3" not in url:
            url += "/v3"
        domain = args.os_domain_id or "default"
        scope: dict[str, Any]
        if args.os_project_id:
            scope = {"project": {"id": args.os_project_id}}
        elif args.os_project_name:
            scope = {"project": {"name": args.os_project_name, "domain": {"id": args.os_project_domain_id or domain}}}
        else:
            scope = {}
        auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": {
            "name": args.os_username, "domain": {"id": args.os_user_domain_id or domain},
            "password": args.os_password}}}}
        if scope:
            auth["scope"] = scope
        request = urllib.request.Request(url + "/auth/tokens?nocatalog", method="POST",
                                         data=json.dumps({"auth": auth}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                return str(response.headers["X-Subject-Token"])
        except urllib.error.HTTPError as exc:
            raise Refused(exc.code, f"Keystone at {url} refused the credentials ({exc.code})") from exc
        except (OSError, ValueError) as exc:
            raise Unreachable(f"cannot reach Keystone at {url}: {exc}") from exc

    def call(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        url = self.base + path
        if self.debug:
            print(f"{PROG}: {method} {url}", file=sys.stderr)
        request = urllib.request.Request(url, method=method, headers={**self.headers, **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            exc.close()
            raise Refused(exc.code, _http_error(exc.code, raw, self.base)) from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the node at {self.base}: {reason}") from exc

    def state(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("GET", "/v2/cache")[1]
        return answer

    def run(self, verb: str, image_id: str | None, now: bool, bar: Bar | None) -> dict[str, Any]:
        try:
            return {"ok": True, "result": self._run(verb, image_id, now, bar)}
        except Refused as exc:
            return {"ok": False, "status": exc.status, "error": exc.message}

    def _run(self, verb: str, image_id: str | None, now: bool, bar: Bar | None) -> Any:
        quoted = urllib.parse.quote(image_id or "", safe="")
        if verb == "list-cached":
            return self.state()["cached_images"]
        if verb == "list-queued":
            return [{"image_id": i, "queued_at": None} for i in self.state()["queued_images"]]
        if verb == "queue-image":
            self.call("PUT", f"/v2/cache/{quoted}")
            if not now:
                return {"queued": True}
            return {"queued": True, "cached": self._wait_cached(str(image_id), bar)}
        if verb in ("delete-cached-image", "delete-queued-image"):
            state = self.state()
            where = "cached_images" if verb == "delete-cached-image" else "queued_images"
            ids = {e["image_id"] for e in state["cached_images"]} if where == "cached_images" \
                else set(state["queued_images"])
            if image_id not in ids:
                raise Refused(404, f"Image {image_id} is not {'cached' if where == 'cached_images' else 'queued'}")
            self.call("DELETE", f"/v2/cache/{quoted}")
            return {"deleted": 1}
        if verb in ("delete-all-cached-images", "delete-all-queued-images"):
            target = "cache" if verb == "delete-all-cached-images" else "queue"
            state = self.state()
            count = len(state["cached_images"] if target == "cache" else state["queued_images"])
            self.call("DELETE", "/v2/cache", {"x-image-cache-clear-target": target})
            return {"deleted": count}
        if verb == "prune":
            answer = self.call("POST", "/v2/cache/prune")[1]
            return {"files_pruned": answer["total_files_pruned"], "bytes_pruned": answer["total_bytes_pruned"]}
        if verb == "clean":
            return {"files_cleaned": self.call("POST", "/v2/cache/clean")[1]["total_files_cleaned"]}
        raise AssertionError(verb)  # SOCKET_ONLY verbs are refused before

    def _wait_cached(self, image_id: str, bar: Bar | None) -> bool:
        """The node caches a queued image right away (Glance 2.16+): wait until it is listed as cached.
        The HTTP API does not say how far a fill is: the bar shows the size once it is cached."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for entry in self.state()["cached_images"]:
                if entry["image_id"] == image_id:
                    if bar is not None:
                        bar.update(entry["size"], entry["size"])
                    return True
            if bar is not None:
                bar.update(0, None)
            time.sleep(0.2)
        return False


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _http_error(status: int, raw: bytes, base: str) -> str:
    if status == 401:
        return "Not authenticated (401): give --os-auth-token or Keystone credentials"
    if status == 403:
        return "Not authorized to make this request (403)."
    try:
        body = json.loads(raw)
        message = body.get("message") or body.get("error", {}).get("message")
    except (ValueError, AttributeError):
        message = None
    if not message:
        text = raw.decode(errors="replace").strip()
        message = text.splitlines()[-1] if text else ""
    return f"{message} ({status})" if message else f"HTTP {status} from {base}"


# -- main -----------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None) -> int:
    """``streamd-cache-manage``: glance-cache-manage's verbs, over the local admin socket or another
    node's HTTP cache API."""
    out = stdout or sys.stdout
    args = parse(sys.argv[1:] if argv is None else argv)
    remote = args.host is not None or args.port is not None
    if remote and (args.socket or args.config):
        args.usage_error("--host/--port and --socket/--config name two different daemons: give one")
    if remote and args.verb in SOCKET_ONLY:
        args.usage_error(f"{args.verb} is served by the admin socket only (run it on the node itself)")
    started = time.monotonic()
    client: SocketClient | HttpClient
    try:
        if remote:
            client = HttpClient(args)
        else:
            path = Path(args.socket) if args.socket else load_config(args.config).admin_socket
            client = SocketClient(path, args.timeout)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Refused as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED

    # A bar only for people: queue-image --now, on a terminal, not --json.
    interactive = args.verb == "queue-image" and args.now and not args.json and out.isatty()
    status = EXIT_OK
    answers = []
    try:
        for image_id in args.image_ids or [None]:
            bar = Bar(out, image_id) if interactive and image_id else None
            try:
                answer = client.run(args.verb, image_id, args.now, bar)
            finally:
                if bar is not None:
                    bar.close()
            answers.append(answer)
            if not answer["ok"]:
                status = EXIT_REFUSED
                if not args.json:
                    target = f" {image_id}" if image_id else ""
                    print(f"{PROG}: {args.verb}{target}: {answer['error']}", file=sys.stderr)
            elif not args.json:
                print(render(args.verb, answer["result"]), file=out)
    except Unreachable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        if isinstance(client, SocketClient):
            client.close()
    if args.json:
        print(json.dumps(answers[0] if len(answers) == 1 else answers, indent=2), file=out)
    if args.verbose:
        print(f"Completed in {time.monotonic() - started:.4f} sec.", file=out)
    return status


if __name__ == "__main__":
    sys.exit(main())
