"""``/healthcheck`` as oslo.middleware's healthcheck answers it (``[healthcheck]``).

200 when every result is available, else 503; HEAD gets 204/503 with no body. The
body is plain text (the reasons, one a line), HTML or JSON by the request's Accept
(webob's choice among text/plain, text/html, application/json; plain text without
one). ``detailed`` adds each result's details, the threads and the garbage
collector, but only for callers with the admin role (noauth: the request's roles;
keystone: the token sent with the request, if any; the path itself needs none).
``allowed_source_ranges`` and ``ignore_proxied_requests`` leave other requests
unanswered (404), as the middleware passes them on to an application without the
route. The results come from :class:`streamd.health.HealthChecker`.
"""

from __future__ import annotations

import datetime as dt
import gc
import html
import io
import ipaddress
import json
import platform
import socket
import sys
import traceback

from aiohttp import web

from ..errors import IdentityUnavailable, InvalidToken
from ..health import HealthResult
from .errors import negotiate_media_type
from .keys import CONTEXT, SERVICES

_OFFERS = ("text/plain", "text/html", "application/json")
_PROXY_HEADERS = ("X-Forwarded", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-For", "X-Forwarded-Prefix")


async def healthcheck(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    options = services.config.healthcheck
    if not _answered(request, options.allowed_source_ranges, options.ignore_proxied_requests):
        raise web.HTTPNotFound()
    assert services.health is not None
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    results = await services.health.run(sockname[1] if sockname else 0)
    healthy = all(r.available for r in results)
    if request.method == "HEAD":
        return web.Response(status=204 if healthy else 503, content_type="text/plain", charset="UTF-8")
    status = 200 if healthy else 503
    accept = request.headers.get("Accept", "")
    media = negotiate_media_type(accept, _OFFERS, default="text/plain") if accept.strip() else "text/plain"
    detailed = options.detailed and await _is_admin(request)
    if media == "application/json":
        return web.Response(status=status, body=render_json(results, detailed).encode(),
                            content_type="application/json")
    if media == "text/html":
        return web.Response(status=status, text=render_html(results, detailed), content_type="text/html",
                            charset="UTF-8")
    return web.Response(status=status, text=render_text(results), content_type="text/plain", charset="UTF-8")


def _answered(request: web.Request, ranges: tuple[str, ...], ignore_proxied: bool) -> bool:
    if ranges:
        try:
            remote = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        networks = [ipaddress.ip_network(r) for r in ranges]
        if not any(n.version == remote.version and remote in n for n in networks):
            return False
    if ignore_proxied and any(request.headers.get(h) for h in _PROXY_HEADERS):
        return False
    return True


async def _is_admin(request: web.Request) -> bool:
    services = request.app[SERVICES]
    if services.identity is None:
        return request[CONTEXT].is_admin
    token = request.headers.get("X-Auth-Token", "").strip()
    if not token:
        return False
    try:
        ctx = await services.identity.authenticate(token, None)
    except (InvalidToken, IdentityUnavailable):
        return False
    return services.policy.is_admin(ctx)


# -- the bodies, as oslo.middleware's templates render them -----------------------------------------------

def render_text(results: list[HealthResult]) -> str:
    return "\n".join(r.reason for r in results if r.reason).strip()


def render_json(results: list[HealthResult], detailed: bool) -> str:
    body: dict[str, object]
    if detailed:
        body = {
            "detailed": True, "python_version": sys.version, "now": _now(), "platform": platform.platform(),
            "gc": {"counts": gc.get_count(), "threshold": gc.get_threshold()},
            "reasons": [{"reason": r.reason, "details": r.details or "", "class": r.kind} for r in results],
            "greenthreads": [], "threads": _thread_stacks(),
        }
    else:
        body = {"reasons": [r.reason for r in results], "detailed": False}
    return json.dumps(body, indent=4, sort_keys=True)


def _e(value: object) -> str:
    """jinja2's ``|e`` (markupsafe): &, <, >, " and ' escaped."""
    return html.escape(str(value), quote=True).replace("&quot;", "&#34;").replace("&#x27;", "&#39;")


def render_html(results: list[HealthResult], detailed: bool) -> str:
    out = ["<HTML>\n<HEAD><TITLE>Healthcheck Status</TITLE></HEAD>\n<BODY>\n"]
    if detailed:
        try:
            hostname: str | None = socket.gethostname()
        except OSError:
            hostname = None
        out.append("<H1>Server status</H1>\n")
        if hostname:
            out.append(f"<B>Server hostname:</B><PRE>{_e(hostname)}</PRE>")
        out.append(f"\n<B>Current time:</B><PRE>{_e(_now())}</PRE>\n"
                   f"<B>Python version:</B><PRE>{_e(sys.version)}</PRE>\n"
                   f"<B>Platform:</B><PRE>{_e(platform.platform())}</PRE>\n<HR></HR>\n"
                   f"<H2>Garbage collector:</H2>\n<B>Counts:</B><PRE>{_e(gc.get_count())}</PRE>\n"
                   f"<B>Thresholds:</B><PRE>{_e(gc.get_threshold())}</PRE>\n<HR></HR>")
    out.append(f"\n<H2>Result of {len(results)} checks:</H2>\n<TABLE bgcolor=\"#ffffff\" border=\"1\">\n<TBODY>\n<TR>\n")
    if detailed:
        out.append("<TH>\nKind\n</TH>\n<TH>\nReason\n</TH>\n<TH>\nDetails\n</TH>\n")
    else:
        out.append("\n<TH>\nReason\n</TH>")
    out.append("\n</TR>\n")
    for r in results:
        if not r.reason:
            continue
        out.append("<TR>\n")
        if detailed:
            out.append(f"    <TD>{_e(r.kind)}</TD>")
        out.append(f"\n    <TD>{_e(r.reason)}</TD>\n")
        if detailed:
            out.append(f"<TD>{_e(r.details or '')}</TD>")
        out.append("\n</TR>")
    out.append("\n</TBODY>\n</TABLE>\n<HR></HR>\n")
    if detailed:
        stacks = _thread_stacks()
        if stacks:
            out.append(f"<H2>{len(stacks)} thread(s) active:</H2>\n<TABLE bgcolor=\"#ffffff\" border=\"1\">\n<TBODY>\n")
            out.append("".join(f"<TR>\n    <TD><PRE>{_e(s)}</PRE></TD>\n</TR>" for s in stacks))
            out.append("\n</TBODY>\n</TABLE>")
    out.append("\n</BODY>\n</HTML>")
    return "".join(out).strip()


def _now() -> str:
    return str(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))


def _thread_stacks() -> list[str]:
    stacks = []
    for frame in sys._current_frames().values():
        buf = io.StringIO()
        traceback.print_stack(frame, file=buf)
        stacks.append(buf.getvalue())
    return stacks


def add_routes(app: web.Application, path: str) -> None:
    app.router.add_get(path, healthcheck)
