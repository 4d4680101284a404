"""glance-download: an image pulled from another region's image service, as Glance 33 does it.

The import request names the remote image (``glance_image_id``), the region
(``glance_region``) and the endpoint interface (``glance_service_interface``, default
``public``). The remote image service is found in the service catalogue of the caller's
own Keystone token, and both requests to it (the image's record, then its data) carry that
token, so the caller can import only what it may read over there.

From the remote record the new image takes ``disk_format``, ``container_format`` and the
properties whose names start with one of ``[glance_download_properties] extra_properties``
(never ``os_glance_*``, which is reserved); the source must be ``active``. When the import
fails the image gets back the formats and properties it had before, and is ``queued``
again, as Glance's ``_ImportMetadata`` revert does. The data streams into staging like a
web-download (hashed and inspected on the way) and must be the size the record says.

The remote endpoint comes from Keystone's catalogue, not from the caller: the web-download
URI filter (which guards against callers aiming us at internal addresses) does not apply,
as in Glance.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import aiohttp

from ..config import ImportFilteringOptions
from ..errors import ImportSourceError, InvalidRequest
from .filtering import UriFilter

# (the caller's token, region, interface) -> the image service's URL there.
EndpointLookup = Callable[[str, str, str], Awaitable[str]]

RESERVED_PREFIX = "os_glance"
# The catalogue's endpoints are trusted: any HTTP(S) address, private networks included.
CATALOGUE_ENDPOINTS = UriFilter(ImportFilteringOptions(allowed_schemes=("http", "https"), allowed_ports=(),
                                                       allow_private_networks=True))


@dataclass(frozen=True)
class RemoteImage:
    """Where a glance-download import reads from."""

    image_id: str
    region: str
    interface: str = "public"

    @classmethod
    def from_request(cls, method: Mapping[str, Any]) -> "RemoteImage":
        """The ``method`` object of an import request, checked as Glance checks it (400s)."""
        region = method.get("glance_region")
        if "glance_region" not in method:
            raise InvalidRequest("'glance_region' needs to be set for glance-download import method")
        if "glance_image_id" not in method:
            raise InvalidRequest("'glance_image_id' needs to be set for glance-download import method")
        image_id = method["glance_image_id"]
        try:
            uuid.UUID(str(image_id))
        except ValueError:
            raise InvalidRequest(f"Remote image id does not look like a UUID: {image_id}") from None
        interface = method.get("glance_service_interface", "public")
        if not isinstance(region, str) or not isinstance(interface, str):
            raise InvalidRequest("'glance_region' and 'glance_service_interface' must be strings")
        return cls(str(image_id), region, interface)


def properties_to_copy(remote: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, str]:
    """The remote record's properties that ``extra_properties`` names (by prefix)."""
    return {key: str(value) for key, value in remote.items()
            if any(key.startswith(p) for p in prefixes) and not key.startswith(RESERVED_PREFIX)
            and value is not None}


async def fetch_remote_record(endpoint: str, image_id: str, token: str, *, timeout: float) -> dict[str, Any]:
    """``GET {endpoint}/v2/images/{image_id}`` with the caller's token; the record, active and sized."""
    url = f"{endpoint.rstrip('/')}/v2/images/{image_id}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False) as session:
            async with session.get(url, headers={"X-Auth-Token": token, "Accept": "application/json"},
                                   allow_redirects=False) as response:
                status = response.status
                raw = await response.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ImportSourceError(f"fetching the remote image record {url} failed: {exc!r}") from exc
    if status != 200:
        raise ImportSourceError(f"the remote image service answered HTTP {status} for {url}")
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise ImportSourceError(f"the remote image record {url} is not JSON") from exc
    if not isinstance(record, dict):
        raise ImportSourceError(f"the remote image record {url} is not an object")
    if record.get("status") != "active":
        raise ImportSourceError(f"Source image status should be active instead of {record.get('status')}")
    try:
        int(record["size"])
    except (KeyError, TypeError, ValueError):
        raise ImportSourceError(f"Size attribute of remote image {image_id} could not be determined.") from None
    return record


def file_url(endpoint: str, image_id: str) -> str:
    return f"{endpoint.rstrip('/')}/v2/images/{image_id}/file"
