"""Error bodies byte for byte as Glance's webob renders them, checked against webob itself.

Glance raises ``webob.exc.HTTP*(explanation=message)`` (and a detail for some), and webob picks
HTML, JSON or plain text from the Accept header. The reference is the real webob of the Glance 33
venv that ``scripts/install.sh --test`` makes (``.venv-glance``), run in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from streamd.api.errors import render_error
from streamd.status import reason_of

ROOT = Path(__file__).resolve().parent.parent
GLANCE_PYTHON = ROOT / ".venv-glance" / "bin" / "python"

ACCEPTS = [None, "", "*/*", "application/json", "text/html", "text/plain", "application/json, */*",
           "application/json;q=0.5, text/html;q=0.4", "garbage", "application/*", "text/html;q=0, */*",
           "image/png", "text/*", "application/json;q=0", "TEXT/HTML", "application/json; charset=utf-8",
           "*/*;q=0.8, application/json"]
MESSAGES = [("No image found with ID 00000000-0000-0000-0000-000000000000", ""),
            ("Image is already present at store 'fs3'", ""),
            ("a <tag> & \"quotes\" and non-ASCII: é ü 漢", ""),
            ("two\nlines", ""),
            ("The Range requested is not available.", "Invalid Range header."),
            ("The request media type application/octet-stream is not supported by this server.",
             "Image failed check 'format_match' (qcow2): disk_format is qcow2 but the data is raw")]
STATUSES = [400, 403, 404, 409, 413, 415, 416, 500, 503]

WEBOB_SCRIPT = r"""
import json, sys
import webob, webob.exc
cases = json.load(sys.stdin)
out = []
for status, explanation, detail, accept, content_type in cases:
    cls = webob.exc.status_map[status]
    # Glance raises its 415s with the message as the detail (webob's own text is the explanation).
    exc = cls(explanation=explanation, detail=detail or (explanation if status == 415 else None))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "x", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http"}
    if accept is not None:
        environ["HTTP_ACCEPT"] = accept
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    resp = webob.Request(environ).get_response(exc)
    out.append([resp.status, resp.headers["Content-Type"], resp.text])
json.dump(out, sys.stdout)
"""


def _webob(cases: list[tuple[int, str, str, str | None, str | None]]) -> list[list[str]]:
    if not GLANCE_PYTHON.exists():
        pytest.fail(f"{GLANCE_PYTHON} is missing: run scripts/install.sh --test (it makes the Glance 33 venv)")
    done = subprocess.run([str(GLANCE_PYTHON), "-c", WEBOB_SCRIPT], input=json.dumps(cases), capture_output=True,
                          text=True, check=True, timeout=120)
    return json.loads(done.stdout)


def test_every_status_accept_and_message_renders_as_webob_does() -> None:
    cases = [(s, m, d, a, c) for s in STATUSES for m, d in MESSAGES for a in ACCEPTS
             for c in ((None, "application/octet-stream", "text/<plain>") if s == 415 else (None,))]
    expected = _webob(cases)
    for (status, message, detail, accept, request_type), (want_status, want_type, want_body) in zip(cases, expected):
        content_type, body = render_error(status, message, accept, detail, request_type)
        assert f"{status} {reason_of(status)}" == want_status
        assert (content_type, body) == (want_type, want_body), (status, message, accept, request_type)
