"""Configuration: an ini file in the shape of glance-api.conf.

Operators bring their habits and often their files from Glance, so option
names are Glance's wherever the meaning is the same. The file is read once,
every option is validated at once (a bad file names *every* wrong option), and
the result is a tree of frozen dataclasses passed explicitly to whoever needs
it; nothing reads configuration from a module global.

Each section is a dataclass whose fields carry their parser and help text in
``field(metadata=...)``; the loader, the validator and the example file
(``etc/streamd.conf.example``, see ``render_example``) all come from that one
description.

A glance-api.conf written for Glance 33 loads unchanged. Values are read as
oslo.config reads them (enclosing quotes, the ``[a, b]`` list syntax, deprecated
option names), a glance-image-import.conf beside the file is read first (the main
file overrides it, option by option), and every option Glance and glance_store know
(``streamd.glance_options``, generated from Glance) is accepted: the ones streamd
implements are honoured, every other one is collected in ``Config.ignored`` with
the reason it does nothing here (``IGNORED_REASONS``), for the one start-up warning
``Config.warning``. An option neither knows stays an error, with a "did you mean".
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from . import glance_options
from .errors import ConfigError

# -- value parsers: each takes the raw string and returns the value or raises ValueError


def _str(raw: str) -> str:
    return raw.strip()


def _opt_str(raw: str) -> str | None:
    raw = raw.strip()
    return raw or None


def _int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if lo is not None and value < lo:
            raise ValueError(f"must be >= {lo}")
        if hi is not None and value > hi:
            raise ValueError(f"must be <= {hi}")
        return value

    parse.__doc__ = f"integer{'' if lo is None else f' >= {lo}'}{'' if hi is None else f' <= {hi}'}"
    return parse


def _power_of_two(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < lo or value > hi or value & (value - 1):
            raise ValueError(f"must be a power of two from {lo} to {hi}")
        return value

    return parse


def _float_range(lo: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if value < lo:
            raise ValueError(f"must be >= {lo}")
        return value

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("must be true or false")


def _oslo_list(item: Callable[[str], Any], *, bracketed: bool = False) -> Callable[[str], tuple[Any, ...]]:
    """A parser of lists as oslo.config's ``ListOpt`` reads them (``oslo_config.types.List``).

    Trailing commas are dropped, then the brackets of ``[a, b]``; the rest is split on commas
    and every item stripped of whitespace and parsed by ``item``. An item that ``item``
    refuses is joined with the next one and tried again, so ``'a,b'`` is one quoted item,
    as in oslo.config. Two leniencies: the brackets may be left out even where Glance
    demands them (``bracketed``: Glance's ``bounds=True``; streamd always took ``a,b``), and
    empty items are dropped (oslo.config keeps them as '' or None, which mean nothing).
    ``bracketed`` also makes the example file write the list in brackets, as Glance needs.
    """
    def parse(raw: str) -> tuple[Any, ...]:
        text = raw.strip().rstrip(",")
        if text.startswith("[") or text.endswith("]"):
            if not (text.startswith("[") and text.endswith("]")):
                raise ValueError("a list in brackets must start with [ and end with ]")
            text = text[1:-1]
        parts = text.split(",") if text.strip() else []
        result: list[Any] = []
        while parts:
            value = parts.pop(0)
            first_error: ValueError | None = None
            while True:
                try:
                    parsed = item(value.strip())
                    break
                except ValueError as exc:
                    first_error = first_error or exc
                    if not parts:
                        raise first_error from None
                    value += "," + parts.pop(0)
            if parsed is not None and parsed != "":
                result.append(parsed)
        return tuple(result)

    parse.bracketed = bracketed  # type: ignore[attr-defined]
    return parse


def _text_item(raw: str) -> str:
    """An item of oslo.config's ``String()``: kept as written."""
    return raw


def _quoted_item(raw: str) -> str:
    """An item of oslo.config's ``String(quotes=True)``: one pair of enclosing quotes removed."""
    if raw and raw[0] in "\"'":
        if len(raw) == 1 or raw[-1] != raw[0]:
            raise ValueError(f"non-closed quote: {raw}")
        return raw[1:-1]
    return raw


def _host_item(raw: str) -> str:
    """An item of oslo.config's ``HostAddress()``: one IP address or host name."""
    if not raw:
        return raw
    if any(c.isspace() or c in "/[]'\"" for c in raw):
        raise ValueError(f"{raw!r} is not a valid host address")
    return raw


def _port_item(raw: str) -> int | None:
    """An item of oslo.config's ``Integer(min=1, max=65535)``."""
    if not raw:
        return None
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1-65535")
    return port


_list = _oslo_list(_text_item)
_quoted_list = _oslo_list(_quoted_item, bracketed=True)
_host_list = _oslo_list(_host_item, bracketed=True)
_port_list = _oslo_list(_port_item, bracketed=True)


def _backends(raw: str) -> tuple[tuple[str, str], ...]:
    """``name:type,name2:type`` as in glance-api.conf's ``enabled_backends``."""
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in _list(raw):
        name, sep, kind = item.partition(":")
        name, kind = name.strip(), kind.strip()
        if not sep or not name or not kind:
            raise ValueError(f"{item!r} is not of the form name:type")
        if kind not in STORE_TYPES:
            raise ValueError(f"store {name!r} has unknown type {kind!r} (known: {', '.join(sorted(STORE_TYPES))})")
        if name in seen:
            raise ValueError(f"store {name!r} is named twice")
        if name.startswith("os_glance_"):
            raise ValueError(f"store names starting with os_glance_ are reserved ({name!r})")
        seen.add(name)
        result.append((name, kind))
    if not result:
        raise ValueError("at least one store is required")
    return tuple(result)


def _dict(raw: str) -> tuple[tuple[str, str], ...]:
    """oslo.config's DictOpt: ``key:value,key2:value2``."""
    result: list[tuple[str, str]] = []
    for item in _list(raw):
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not of the form key:value")
        result.append((key.strip(), value.strip()))
    return tuple(result)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _hash_algorithm(raw: str) -> str:
    name = raw.strip().lower()
    if name not in hashlib.algorithms_available:
        raise ValueError(f"{name!r} is not a hash algorithm this Python offers")
    return name


def _size(raw: str) -> int:
    """Bytes, with an optional KB/MB/GB/TB (powers of 1024) suffix as Glance accepts."""
    text = raw.strip().upper().replace(" ", "")
    for suffix, factor in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    else:
        factor = 1
    value = int(text) * factor
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _storage_quota(raw: str) -> int:
    """``user_storage_quota`` as Glance reads it (glance/api/common.py ``get_remaining_quota``): digits,
    optionally followed by B, KB, MB, GB or TB (powers of 1024), no space between. Glance refuses a
    bad value on every upload; here it is a configuration error at start-up."""
    match = re.fullmatch(r"(\d+)((K|M|G|T)?B)?", raw.strip())
    if not match:
        raise ValueError("must be a number of bytes, optionally followed by B, KB, MB, GB or TB (e.g. 10GB)")
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(match.group(3) or "", 1)
    return int(match.group(1)) * factor


def _database_url(raw: str) -> str:
    """Accept Glance's sync URLs too and pick the async driver for them."""
    url = raw.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("must be a URL such as sqlite:///path or postgresql://user@host/db")
    dialect, _, driver = scheme.partition("+")
    if dialect == "sqlite":
        if driver not in ("", "aiosqlite", "pysqlite"):
            raise ValueError(f"unsupported sqlite driver {driver!r}")
        return f"sqlite+aiosqlite://{rest}"
    if dialect in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg", "psycopg2", "psycopg"):
            raise ValueError(f"unsupported postgresql driver {driver!r}")
        return f"postgresql+asyncpg://{rest}"
    raise ValueError(f"unsupported database {dialect!r}: use sqlite or postgresql")


def opt(default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


# -- sections ------------------------------------------------------------------------

STORE_TYPES = {"file", "rbd", "s3", "swift", "http"}

GLANCE_DISK_FORMATS = "ami,ari,aki,vhd,vhdx,vmdk,raw,qcow2,vdi,iso,ploop"
GLANCE_CONTAINER_FORMATS = "ami,ari,aki,bare,ovf,ova,docker,compressed"


AUTH_STRATEGIES = ("noauth", "keystone")
# Glance's paste pipelines (glance-api-paste.ini); the keystone ones authenticate.
PASTE_FLAVORS = ("caching", "cachemanagement", "keystone", "keystone+caching", "keystone+cachemanagement")


@dataclass(frozen=True)
class DefaultOptions:
    bind_host: str = opt("127.0.0.1", _str, "Address the API listens on.")
    bind_port: int = opt(9292, _int_range(0, 65535), "TCP port the API listens on (0 picks a free port).")
    data_dir: str = opt(
        "./data", _str,
        "Directory for everything streamd keeps locally by default: the SQLite catalogue, the "
        "default file store and the cache. Relative paths are taken from the directory streamd "
        "was started in.")
    public_endpoint: str | None = opt(
        None, _opt_str, "Public URL of this API, used in the versions document instead of the request's URL.")
    enabled_backends: tuple[tuple[str, str], ...] = opt(
        (("fs", "file"),), _backends,
        "Stores this node writes to, as name:type pairs (types: file). Each store is configured "
        "in a section named after it.")
    image_size_cap: int = opt(
        1099511627776, _int_range(0, 9223372036854775808),
        "Largest image, in bytes, that can be uploaded (413 past it).")
    upload_worker_threads: int = opt(
        0, _int_range(0, 1024),
        "Threads of the node's one hash pool, shared by every upload, stage, import and cache fill "
        "(md5, os_hash_value, signature hashes): 0 is one per core, so that no more hash threads are "
        "busy than there are cores however many clients upload at once.")
    upload_writer_threads: int = opt(
        8, _int_range(1, 1024),
        "Threads of each store's writer pool (and of the cache's), shared by every upload, stage, "
        "import and cache fill into it (blocking writes to the file store, Ceph, S3 or Swift). A write "
        "waiting on a slow store holds one of that store's threads, none of the others'.")
    upload_buffer_size: int = opt(
        32 << 20, _size,
        "Bytes of one upload (or stage or import) read from its client and not yet hashed and written "
        "(suffixes KB, MB, GB); past it the client's socket is read no further until the "
        "consumers catch up. All streams together are also held to a bound that grows with the "
        "hash pool's threads (two 4 MiB batches per thread, plus two).")
    hashing_algorithm: str = opt(
        "sha512", _hash_algorithm, "Algorithm for os_hash_value (any hashlib algorithm; Glance's default sha512).")
    use_json: bool = opt(
        False, _bool,
        "Log one JSON object a line (time, level, logger, message, request_id, project_id, user_id, image_id; "
        "access records add method, path, route, status, bytes, duration_ms), as oslo.log's option names it. "
        "False: plain lines for people.")
    transport_url: str | None = opt(
        None, _opt_str,
        "oslo.messaging transport of the notifications (rabbit://USER:PASS@HOST:5672/), unless "
        "[oslo_messaging_notifications] transport_url names another.")
    default_publisher_id: str = opt("image.localhost", _str, "publisher_id of the notifications streamd sends.")
    disabled_notifications: tuple[str, ...] = opt(
        (), _list, "Notifications not sent: event types (image.send) or whole groups (image, task, metadef_tag).")
    control_exchange: str = opt("openstack", _str, "Exchange the notifications are published to (oslo.messaging's).")
    do_secure_hash: bool = opt(
        True, _bool,
        "Compute checksum and os_hash_value of the data a location added by POST /v2/images/{id}/locations "
        "names (reading it once, in the location_import task), and check it against the validation_data given.")
    http_retries: int = opt(
        3, _int_range(0), "Times the location_import task tries again to read a location's data for its hashes.")
    image_property_quota: int = opt(128, _int_range(-1), "Most additional properties an image may have (-1: no limit).")
    image_tag_quota: int = opt(128, _int_range(-1), "Most tags an image may have (-1: no limit).")
    image_member_quota: int = opt(128, _int_range(-1), "Most members an image may have (-1: no limit).")
    image_location_quota: int = opt(10, _int_range(-1), "Most locations an image may have (-1: no limit).")
    user_storage_quota: int = opt(
        0, _storage_quota,
        "Bytes of image data each project may hold (stored copies and staged data, over all its "
        "images), with an optional B, KB, MB, GB or TB suffix (powers of 1024); 0: no limit. Uploads, "
        "stages and imports past it get 413; data of unknown size stops at the limit. Not used with "
        "use_keystone_limits.")
    use_keystone_limits: bool = opt(
        False, _bool,
        "Enforce the unified limits registered in Keystone (image_size_total, image_stage_total, "
        "image_count_total, image_count_uploading), read with the [oslo_limit] credentials.")
    limit_param_default: int = opt(25, _int_range(1), "Page size of image lists when the request gives no limit.")
    api_limit_max: int = opt(1000, _int_range(1), "Largest page size a request may ask for.")
    enabled_import_methods: tuple[str, ...] = opt(
        ("glance-direct", "web-download", "copy-image"), _quoted_list, "Import methods offered by POST /v2/images/{id}/import.")
    host_id: str | None = opt(
        None, _opt_str,
        "Name of this node in a shared catalogue, used to recover its own interrupted uploads after a "
        "crash (default: <hostname>:<data_dir>).")
    image_cache_dir: str | None = opt(
        "", _opt_str,
        "Directory of the on-disk image cache (default: <data_dir>/cache). Set it to 'none' to run "
        "without a cache.")
    image_cache_max_size: int = opt(
        10737418240, _size, "Bytes the cache may hold; least recently used images are evicted past it.")
    metadefs_initial_load: bool = opt(
        True, _bool,
        "At start-up, load Glance's published metadata definitions (OS::Glance::Image, OS::Nova::Flavor "
        "and the rest) into the metadefs catalogue if it is empty, as a new Glance gets them from "
        "glance-manage db_load_metadefs. Once loaded they are the operator's: see streamd metadefs-unload.")
    image_cache_local_stores: bool = opt(
        False, _bool,
        "Also copy images whose data is in a local file store into the cache on first download. Off: "
        "they are served straight from the store (as fast, and no second copy on the same node); the "
        "cache then holds images of remote stores (RBD) and of peers, and what is queued explicitly.")
    image_cache_stall_time: float = opt(
        86400.0, _float_range(0.0), "Seconds after which a partial fill that is not in progress is removed.")
    image_cache_direct_io: bool = opt(
        False, _bool,
        "Write cache fills with O_DIRECT, and read the cache so to serve fills being followed and hits "
        "(plain HTTP): the copies skip the page cache, whose new pages cost this project's VMs 1-3 "
        "CPU-s/GiB. Measured (bench/cache.py --peer-only): a fill from a peer costs the receiving "
        "node 1.0-1.1 CPU-s/GiB with it on, 1.4-4.2 off; hits then read the disk every time (~1 GB/s "
        "here, against ~2.2 GB/s from the page cache). A filesystem that refuses O_DIRECT falls back "
        "to buffered I/O with one warning.")
    cache_prefetcher_interval: float = opt(
        300.0, _float_range(0.0), "Seconds between runs of the prefetcher over the cache queue (0: never).")
    image_cache_maintenance_interval: float = opt(
        60.0, _float_range(0.0),
        "Seconds between runs of the in-daemon pruner and cleaner (0: only after fills and on request).")
    image_cache_verify_interval: float = opt(
        86400.0, _float_range(0.0),
        "Seconds after which a cached image is re-hashed against the catalogue by the maintenance job "
        "(one image per run; 0: only on fill and on demand).")
    property_protection_file: str | None = opt(
        None, _opt_str,
        "Property protection file (Glance's format): ini sections named by regular expressions of "
        "property names, in the order they are tried, each with create, read, update and delete "
        "set to comma-separated roles (or one policy rule name, when the rule format is policies); "
        "'@' is everyone, '!' no one. A relative path is taken from the "
        "directory of this configuration file. Unset: no property protections. A missing or "
        "malformed file stops the start.")
    property_protection_rule_format: str = opt(
        "roles", _choice("roles", "policies"),
        "What the property protection file's values are: roles (comma-separated role names) or "
        "policies (one rule of the policy file, or of Glance's defaults, per operation).")
    peer_url: str | None = opt(
        None, _opt_str,
        "URL at which other streamd nodes sharing this catalogue reach this node to fetch images from its "
        "cache (e.g. http://10.0.0.5:9292). Unset: this node neither serves nor asks peers.")
    peer_token: str | None = opt(
        None, _opt_str, "Shared secret that nodes present to each other's peer route; required with peer_url.")
    fill_lease_ttl: float = opt(
        10.0, _float_range(0.5),
        "Seconds a node's lease on filling an image from the backend lasts (renewed while its fill runs). "
        "With peers on, one node of the catalogue fills a cold image and the others stream its fill; "
        "when the filler dies its lease expires and the others carry on from the backend.")
    admin_socket_path: str | None = opt(
        None, _opt_str,
        "Unix socket for streamd-cache-manage (default: <data_dir>/run/admin.sock; mode 0600 in a 0700 directory).")
    auth_strategy: str = opt(
        "noauth", _choice(*AUTH_STRATEGIES),
        "How callers are identified. noauth: identity from X-Project-Id, X-User-Id and X-Roles, "
        "with the [noauth] default identity when none is sent; any X-Auth-Token is accepted. "
        "keystone: every request but the versions document and /healthcheck needs a Keystone token "
        "(X-Auth-Token), validated as [keystone_authtoken] says; identity headers sent by clients "
        "are ignored. [paste_deploy] flavor = keystone (or keystone+caching, "
        "keystone+cachemanagement) selects keystone too, as in a Glance deployment.")
    allow_noauth_on_network: bool = opt(
        False, _bool,
        "Let the daemon start with auth_strategy noauth on a bind_host that is not a loopback "
        "address. Off, such a daemon refuses to start: in noauth mode anyone who can reach the port "
        "is whoever the X-Roles header says (admin included).")
    graceful_shutdown_timeout: float = opt(
        60.0, _float_range(0.0),
        "Seconds a SIGTERM waits for in-flight requests (uploads included) before aborting them.")
    client_socket_timeout: float = opt(
        900.0, _float_range(0.0), "Seconds an idle client connection is kept open.")
    upload_body_in_thread: bool = opt(
        True, _bool,
        "Read the body of a plain PUT /file (Content-Length of 1 MiB or more, not chunked, not "
        "compressed, no TLS) in a worker thread straight from the socket instead of on the event "
        "loop: about 0.3 CPU-s/GiB less per upload. The connection closes after such an upload. "
        "Off: aiohttp reads every body on the event loop.")
    node_staging_uri: str | None = opt(
        "", _opt_str,
        "file:// URI of the directory where PUT /stage and web-download keep data before import "
        "(default: <data_dir>/staging). On the filesystem of a file store, a glance-direct import "
        "into that store is a rename.")
    delayed_delete: bool = opt(
        False, _bool,
        "Delay the deletion of image data (Glance's delayed delete). On, DELETE /v2/images/{id} of an "
        "image with data puts it in pending_delete (hidden: show and list answer as for a deleted "
        "image) and leaves its data in the stores; the scrubber deletes the data scrub_time seconds "
        "later and marks the image deleted. `streamd scrub --restore IMAGE_ID` brings such an image "
        "back. This node then also runs the scrubber every wakeup_time seconds.")
    scrub_time: int = opt(
        0, _int_range(0),
        "Seconds an image stays in pending_delete before the scrubber deletes its data.")
    scrub_pool_size: int = opt(1, _int_range(1), "Images the scrubber deletes at once (1: one after the other).")
    show_image_direct_url: bool = opt(
        False, _bool,
        "Show direct_url on images: the URL of the image's best location (the first after "
        "location_strategy and the stores' weight), for clients that read the store themselves (Nova, "
        "Cinder cloning from RBD). Only to callers the get_image_location rule lets read locations. "
        "Location URLs name the backend's layout; leave this off unless such clients need it.")
    show_multiple_locations: bool = opt(
        False, _bool,
        "Show the locations list (url, metadata with the store's id) on images, and let callers with "
        "set_image_location / delete_image_location change it by PATCH /locations (add, replace, remove). "
        "Glance's deprecated option, with its risks: off by default.")
    location_strategy: str = opt(
        "location_order", _choice("location_order", "store_type"),
        "How an image's locations are ordered for direct_url and the locations list (earlier Glance's "
        "option): location_order keeps the order they were added in (then the stores' weight, highest "
        "first, as Glance 33); store_type orders them by [store_type_location_strategy] store_type_preference.")
    wakeup_time: int = opt(
        300, _int_range(0),
        "Seconds between runs of the in-daemon scrubber (with delayed_delete; 0: never, leave it to "
        "`streamd scrub`, e.g. from cron). Nodes sharing a catalogue may all run it: each image's data "
        "is deleted by exactly one of them.")


@dataclass(frozen=True)
class NoauthOptions:
    default_project_id: str = opt(
        "00000000000000000000000000000001", _str,
        "Project of callers that send no X-Project-Id.")
    default_user_id: str = opt(
        "00000000000000000000000000000002", _str, "User of callers that send no X-User-Id.")
    default_roles: tuple[str, ...] = opt(
        ("admin", "member", "reader"), _list, "Roles of callers that send no X-Roles.")


def _password_auth_type(raw: str) -> str:
    value = raw.strip()
    if value not in ("password", "v3password"):
        raise ValueError("only the password auth plugin is available (auth_type = password)")
    return value


def _delay_auth_decision(raw: str) -> bool:
    if _bool(raw):
        raise ValueError("only false is available: streamd decides every request itself (401 or 503)")
    return False


@dataclass(frozen=True)
class KeystoneAuthtokenOptions:
    """keystonemiddleware's auth_token options, with its names and meanings (those streamd uses)."""

    www_authenticate_uri: str | None = opt(
        None, _opt_str,
        "Public Identity API endpoint named in the WWW-Authenticate header of 401 answers, where "
        "clients go to authenticate (default: auth_url).")
    auth_url: str | None = opt(
        None, _opt_str,
        "Identity API endpoint streamd authenticates its service user at and validates tokens "
        "against (http://host:5000 or http://host:5000/v3).")
    auth_type: str = opt("password", _password_auth_type, "Auth plugin of the service user: password only.")
    username: str | None = opt(None, _opt_str, "Service user's name (in user_domain_name/user_domain_id).")
    user_id: str | None = opt(None, _opt_str, "Service user's id (instead of username).")
    password: str | None = opt(None, _opt_str, "Service user's password.")
    user_domain_name: str | None = opt(None, _opt_str, "Domain name of the service user.")
    user_domain_id: str | None = opt(None, _opt_str, "Domain id of the service user.")
    project_name: str | None = opt(
        None, _opt_str, "Project the service user's token is scoped to (Glance's deployment guide: service).")
    project_id: str | None = opt(None, _opt_str, "Id of that project (instead of project_name).")
    project_domain_name: str | None = opt(None, _opt_str, "Domain name of project_name.")
    project_domain_id: str | None = opt(None, _opt_str, "Domain id of project_name.")
    region_name: str | None = opt(
        None, _opt_str,
        "Region of the identity endpoint. Accepted for keystonemiddleware's files: streamd always "
        "talks to auth_url.")
    service_token_roles: tuple[str, ...] = opt(
        ("service",), _list,
        "Roles of which an X-Service-Token must hold one to let an expired user token through "
        "(a service finishing work the user started).")
    service_token_roles_required: bool = opt(
        True, _bool,
        "A service token without one of service_token_roles is refused (401). False: any valid "
        "token is accepted as a service token, but only one with the roles may pass an expired "
        "user token.")
    token_cache_time: int = opt(
        300, _int_range(-1),
        "Seconds a validated token is kept in the in-process cache (never past its own expiry); "
        "-1: no cache. A token revoked in Keystone is refused at the latest this long after its "
        "revocation, as with keystonemiddleware.")
    cafile: str | None = opt(None, _opt_str, "PEM file of the CAs to verify the identity endpoint's HTTPS with.")
    insecure: bool = opt(False, _bool, "Do not verify the identity endpoint's HTTPS certificate.")
    http_connect_timeout: int | None = opt(
        None, lambda raw: _int_range(1)(raw) if raw.strip() else None,
        "Seconds a request to the identity endpoint may take before the API answers 503 (unset: 30).")
    delay_auth_decision: bool = opt(
        False, _delay_auth_decision, "Only false: a request without a valid token is refused here.")


@dataclass(frozen=True)
class PasteDeployOptions:
    flavor: str | None = opt(
        None, lambda raw: _choice(*PASTE_FLAVORS)(raw) if raw.strip() else None,
        "Glance's pipeline flavor: keystone, keystone+caching and keystone+cachemanagement select "
        "auth_strategy keystone; the cache is streamd's own either way.")


@dataclass(frozen=True)
class DatabaseOptions:
    connection: str | None = opt(
        None, lambda raw: _database_url(raw) if raw.strip() else None,
        "Catalogue database URL: sqlite:///path (default: <data_dir>/streamd.sqlite) or "
        "postgresql://user:password@host:port/dbname for several nodes sharing one catalogue.")
    pool_size: int = opt(10, _int_range(1), "Connections kept open to PostgreSQL.")
    busy_timeout: float = opt(
        30.0, _float_range(0.0), "Seconds SQLite waits for a lock held by another process before failing.")


@dataclass(frozen=True)
class StoreTypeLocationStrategyOptions:
    store_type_preference: tuple[str, ...] = opt(
        (), _list,
        "Store types (file, rbd, s3, swift) in the order their locations are preferred when location_strategy is "
        "store_type; locations in stores of other types come after them, in their own order.")


@dataclass(frozen=True)
class GlanceStoreOptions:
    default_backend: str | None = opt(
        None, _opt_str, "Store that uploads go to when the request names none (default: the first enabled store).")


@dataclass(frozen=True)
class ImageFormatOptions:
    disk_formats: tuple[str, ...] = opt(
        tuple(GLANCE_DISK_FORMATS.split(",")), _list, "Disk formats an image may declare.")
    container_formats: tuple[str, ...] = opt(
        tuple(GLANCE_CONTAINER_FORMATS.split(",")), _list, "Container formats an image may declare.")
    require_image_format_match: bool = opt(
        True, _bool,
        "Refuse (415) image data of container_format bare whose content does not match its disk_format, "
        "as soon as the first bytes show it (Glance's option). Safety checks run either way.")
    gpt_safety_checks_nonfatal: tuple[str, ...] = opt(
        (), _list, "GPT/MBR safety checks (mbr) whose failure is only logged, as in Glance.")


@dataclass(frozen=True)
class FileStoreOptions:
    filesystem_store_datadir: str | None = opt(
        None, _opt_str, "Directory the image files of this store live in (default: <data_dir>/images/<store>).")
    filesystem_thin_provisioning: bool = opt(
        False, _bool, "Leave runs of zero blocks as holes in the written files.")
    filesystem_thin_provisioning_block_size: int = opt(
        65536, _power_of_two(4096, 65536),
        "Granularity of zero detection with thin provisioning: a power of two from 4096 to 65536 bytes.")
    filesystem_store_direct_io: bool = opt(
        False, _bool,
        "Write image data with O_DIRECT (through a 1 MiB aligned buffer of each upload's), not through "
        "the page cache: on hosts where new page-cache pages are dear (measured on a 2-core VM: a "
        "buffered write of fresh data 2.4-2.9 CPU-s/GiB, O_DIRECT 0.12) it saves the writer's CPU, but "
        "the first download of an image then reads the disk. A filesystem that refuses O_DIRECT "
        "at open (EINVAL) is written through the page cache, with one line logged.")
    filesystem_store_chunk_size: int = opt(
        65536, _int_range(4096, 64 << 20), "Bytes read or written at a time (Glance's option; streamd moves larger chunks where it helps).")
    weight: int = opt(
        0, _int_range(),
        "Weight of the store (Glance 33's option): an image's locations in stores of higher weight come "
        "first in direct_url and the locations list.")
    store_description: str | None = opt(None, _opt_str, "Description shown by GET /v2/info/stores.")
    filesystem_store_mount_check: str = opt(
        "none", _choice("none", "mountpoint", "marker"),
        "How the store makes sure its directory is the filesystem it should be (e.g. an NFS share) and "
        "not the empty local directory left when the share is not mounted: none; mountpoint (the "
        "directory must be a mount point); marker (the directory must hold a file named .marker, "
        "which the operator creates once on the mounted filesystem). When the check fails the store "
        "turns read-only: writes and deletes get 503, /healthcheck answers 503, and nothing is "
        "written to the directory underneath; it is writable again once the check passes.")


@dataclass(frozen=True)
class RbdStoreOptions:
    rbd_store_pool: str = opt("images", _str, "Ceph pool the images are stored in.")
    rbd_store_user: str = opt("admin", _str, "Ceph client id (without 'client.') to connect as.")
    rbd_store_ceph_conf: str = opt(
        "/etc/ceph/ceph.conf", _str, "ceph.conf of the cluster; it names the monitors and the keyring.")
    rbd_store_chunk_size: int = opt(
        8, _power_of_two(1, 32), "RBD object size in MiB (a power of two), as in Glance.")
    rbd_thin_provisioning: bool = opt(
        True, _bool, "Never write zero blocks to Ceph (sparse upload). On by default in streamd.")
    rbd_thin_provisioning_block_size: int = opt(
        65536, _power_of_two(4096, 4 << 20),
        "Granularity of zero detection inside each object: a power of two from 4 KiB to 4 MiB.")
    rados_connect_timeout: float = opt(
        10.0, _float_range(0.0), "Seconds to wait for the cluster when connecting.")
    rados_op_timeout: float = opt(
        30.0, _float_range(0.0),
        "Seconds a single Ceph operation may take before the request fails with 503 (0: wait forever).")
    weight: int = opt(
        0, _int_range(),
        "Weight of the store (Glance 33's option): an image's locations in stores of higher weight come "
        "first in direct_url and the locations list.")
    store_description: str | None = opt(None, _opt_str, "Description shown by GET /v2/info/stores.")


@dataclass(frozen=True)
class S3StoreOptions:
    s3_store_host: str | None = opt(
        None, _opt_str,
        "The S3 endpoint: host[:port] (http) or an http:// or https:// URL. Required. Amazon's "
        "s3-REGION.amazonaws.com hosts imply their region, as in glance_store.")
    s3_store_region_name: str = opt("", _str, "Region of the endpoint (empty: from the host, else us-east-1 for signing).")
    s3_store_access_key: str | None = opt(None, _opt_str, "Access key of the S3 user. Required.")
    s3_store_secret_key: str | None = opt(None, _opt_str, "Secret key of the S3 user. Required.")
    s3_store_bucket: str | None = opt(None, _opt_str, "Bucket the images are stored in (one object per image, named by its id). Required.")
    s3_store_create_bucket_on_put: bool = opt(
        False, _bool, "Create the bucket on the first write if it does not exist (else such writes fail).")
    s3_store_bucket_url_format: str = opt(
        "auto", _choice("auto", "virtual", "path"),
        "Addressing of the bucket: path (https://host/bucket/key), virtual (https://bucket.host/key) or "
        "auto (botocore's choice).")
    s3_store_large_object_size: int = opt(
        100, _int_range(0),
        "Images of at least this many MiB are written as multipart uploads; smaller ones in one PUT, "
        "buffered in memory (so this bounds an upload's buffer). An image of unknown size turns into a "
        "multipart upload once its data passes the size.")
    s3_store_large_object_chunk_size: int = opt(
        10, _int_range(5, 5120),
        "Part size of multipart uploads in MiB (at least 5, S3's minimum); grown for images that would "
        "need more than 10000 parts (S3's maximum) when the size is known.")
    s3_store_thread_pools: int = opt(
        10, _int_range(1, 64),
        "Parts of one multipart upload sent at once (each buffered in memory while it is sent).")
    s3_store_cacert: str = opt(
        "", _str, "CA bundle that verifies an https endpoint (empty: the system's).")
    s3_store_enable_data_integrity_protection: bool = opt(
        False, _bool,
        "Use s3_store_request_checksum_calculation and s3_store_response_checksum_validation (else both "
        "are when_required, which S3-compatible servers that predate the new checksums accept).")
    s3_store_request_checksum_calculation: str = opt(
        "when_required", _choice("when_supported", "when_required"),
        "When requests carry checksums (with data integrity protection on).")
    s3_store_response_checksum_validation: str = opt(
        "when_required", _choice("when_supported", "when_required"),
        "When response checksums are validated (with data integrity protection on).")
    weight: int = opt(
        0, _int_range(),
        "Weight of the store (Glance 33's option): an image's locations in stores of higher weight come "
        "first in direct_url and the locations list.")
    store_description: str | None = opt(None, _opt_str, "Description shown by GET /v2/info/stores.")


@dataclass(frozen=True)
class SwiftStoreOptions:
    swift_store_auth_address: str | None = opt(
        None, _opt_str,
        "The auth URL: Keystone's (e.g. https://keystone:5000/v3) with swift_store_auth_version = 3, or "
        "tempauth's (e.g. http://rgw:7480/auth/1.0) with 1. Required. Glance 33 reads it from "
        "swift_store_config_file's reference instead (the deprecated option of the same name there).")
    swift_store_auth_version: str = opt(
        "3", _choice("1", "3"),
        "3: Keystone v3 (password of swift_store_user in its project); 1: tempauth (Swift's, or the RADOS "
        "Gateway's Swift subusers). Glance 33 knows 3 only.")
    swift_store_user: str | None = opt(
        None, _opt_str,
        "The user: PROJECT:USER for Keystone (as glance_store), ACCOUNT:USER for tempauth. Required.")
    swift_store_key: str | None = opt(None, _opt_str, "The user's password (Keystone) or key (tempauth). Required.")
    swift_store_user_domain_name: str = opt(
        "Default", _str, "Keystone domain of swift_store_user. streamd's option (glance_store takes it from "
        "swift_store_config_file).")
    swift_store_project_domain_name: str = opt(
        "Default", _str, "Keystone domain of swift_store_user's project. streamd's option (glance_store takes "
        "it from swift_store_config_file).")
    default_swift_reference: str = opt(
        "ref1", _str,
        "The account reference swift+config://REFERENCE/container/image locations (written by a Glance "
        "with swift_store_config_file) name: such locations are this store's, read with its credentials.")
    swift_store_container: str = opt(
        "glance", _str,
        "Container the images are stored in (one object per image, named by its id), or the prefix of the "
        "containers with swift_store_multiple_containers_seed.")
    swift_store_multiple_containers_seed: int = opt(
        0, _int_range(0, 32),
        "0: one container; N: images go to <swift_store_container>_<first N characters of the image id> "
        "(its dashes not counted), as in glance_store.")
    swift_store_create_container_on_put: bool = opt(
        False, _bool, "Create the container on the first write if it does not exist (else such writes fail).")
    swift_store_large_object_size: int = opt(
        5120, _int_range(1),
        "Images of at least this many MiB, and those of unknown size, are written as Static Large Objects "
        "(segments and a manifest); smaller ones in one PUT. Neither is buffered: both stream.")
    swift_store_large_object_chunk_size: int = opt(
        200, _int_range(1, 5120),
        "Segment size in MiB; grown for images that would need more than 1000 segments (Swift's limit of "
        "one manifest) when the size is known.")
    swift_store_multi_tenant: bool = opt(
        False, _bool,
        "Must stay false: streamd stores every image in the account of swift_store_user (glance_store's "
        "multi-tenant mode, images in the requesting project's account with its token, is not supported).")
    swift_store_endpoint: str = opt(
        "", _str, "The storage URL to use instead of the one auth returns (empty: auth's).")
    swift_store_endpoint_type: str = opt(
        "publicURL", _str, "Endpoint interface looked up in Keystone's catalogue (publicURL, internalURL, adminURL).")
    swift_store_service_type: str = opt("object-store", _str, "Service type looked up in Keystone's catalogue.")
    swift_store_region: str = opt("", _str, "Region looked up in Keystone's catalogue (empty: any).")
    swift_store_auth_insecure: bool = opt(False, _bool, "Do not verify the certificates of https auth and storage URLs.")
    swift_store_cacert: str = opt("", _str, "CA bundle that verifies https auth and storage URLs (empty: the system's).")
    weight: int = opt(
        0, _int_range(),
        "Weight of the store (Glance 33's option): an image's locations in stores of higher weight come "
        "first in direct_url and the locations list.")
    store_description: str | None = opt(None, _opt_str, "Description shown by GET /v2/info/stores.")


@dataclass(frozen=True)
class ImportFilteringOptions:
    allowed_schemes: tuple[str, ...] = opt(
        ("http", "https"), _quoted_list, "Schemes web-download may fetch from, of http, https and ftp (empty: any scheme not disallowed).")
    disallowed_schemes: tuple[str, ...] = opt(
        (), _quoted_list, "Schemes web-download refuses; ignored when allowed_schemes is set.")
    allowed_hosts: tuple[str, ...] = opt(
        (), _host_list, "Hosts web-download may fetch from (empty: any host not disallowed).")
    disallowed_hosts: tuple[str, ...] = opt(
        (), _host_list, "Hosts web-download refuses; ignored when allowed_hosts is set.")
    allowed_ports: tuple[int, ...] = opt(
        (80, 443), _port_list,
        "Ports web-download may fetch from when the URI names one (a URI with no port is not checked).")
    disallowed_ports: tuple[int, ...] = opt(
        (), _port_list, "Ports web-download refuses when the URI names one; ignored when allowed_ports is set.")
    allow_private_networks: bool = opt(
        False, _bool,
        "Let web-download reach loopback, link-local, private and other non-global addresses "
        "(checked on the address the host name resolves to, at every redirect). streamd's option.")


@dataclass(frozen=True)
class ImageImportOptions:
    image_import_plugins: tuple[str, ...] = opt(
        (), _quoted_list,
        "Plugins run on imported data before it is stored (never for copy-image): image_decompression, "
        "image_conversion, inject_image_metadata, in the order given.")
    import_lock_timeout: float = opt(
        60.0, _float_range(5.0),
        "Seconds without a heartbeat after which an import's lock (os_glance_import_task) is taken "
        "as dead and may be broken by another import. streamd's option: Glance waits 60-120 minutes.")
    web_download_stall_timeout: float = opt(
        60.0, _float_range(1.0), "Seconds a web-download source may send nothing before the import fails.")
    web_download_max_redirects: int = opt(5, _int_range(0, 20), "Redirects a web-download follows at most.")


@dataclass(frozen=True)
class GlanceDownloadOptions:
    extra_properties: tuple[str, ...] = opt(
        ("hw_", "trait:", "os_distro", "os_secure_boot", "os_type"), _quoted_list,
        "Prefixes of the properties a glance-download import copies from the source image to the new "
        "one (disk_format and container_format are always copied; os_glance_* never is).")


@dataclass(frozen=True)
class ImageConversionOptions:
    output_format: str = opt(
        "raw", _choice("raw", "qcow2", "vmdk"), "Disk format the image_conversion plugin converts imports to.")


@dataclass(frozen=True)
class InjectMetadataOptions:
    inject: tuple[tuple[str, str], ...] = opt(
        (), _dict, "Properties the inject_image_metadata plugin sets on imported images, as key:value pairs.")
    ignore_user_roles: tuple[str, ...] = opt(
        ("admin",), _list, "Callers with any of these roles get nothing injected.")


@dataclass(frozen=True)
class NotificationOptions:
    driver: tuple[str, ...] = opt(
        (), _list,
        "oslo.messaging notification drivers: messagingv2 (Glance's usual), messaging, log, routing, noop. "
        "Empty (the default): no notifications are sent.")
    transport_url: str | None = opt(None, _opt_str, "Transport of the notifications ([DEFAULT] transport_url if unset).")
    topics: tuple[str, ...] = opt(("notifications",), _list, "Topics the notifications are sent to.")
    retry: int = opt(
        2, _int_range(-1),
        "Times oslo.messaging retries one delivery before streamd keeps the notification to send it again "
        "later (-1: retry forever, as oslo.messaging's default; then one that cannot be delivered holds the "
        "others back until the bus is there).")
    queue_size: int = opt(
        10000, _int_range(1),
        "Notifications waiting for the bus at most; past it the oldest are dropped (and counted). "
        "streamd's option: requests never wait for the bus.")


@dataclass(frozen=True)
class HttpStoreOptions:
    https_ca_certificates_file: str | None = opt(
        None, _opt_str, "CA bundle that verifies the web servers of https locations (then https_insecure is ignored).")
    https_insecure: bool = opt(
        True, _bool, "Do not verify the certificates of https locations (glance_store's default, true).")
    http_proxy_information: tuple[tuple[str, str], ...] = opt(
        (), _dict, "Proxies for reading locations, as scheme:proxy pairs (http:10.0.0.1:3128, https:...).")
    weight: int = opt(
        0, _int_range(),
        "Weight of the store (Glance 33's option): an image's locations in stores of higher weight come "
        "first in direct_url and the locations list.")
    store_description: str | None = opt(None, _opt_str, "Description shown by GET /v2/info/stores.")


STORE_OPTION_CLASSES: dict[str, type] = {"file": FileStoreOptions, "rbd": RbdStoreOptions, "s3": S3StoreOptions,
                                         "swift": SwiftStoreOptions, "http": HttpStoreOptions}

HEALTHCHECK_BACKENDS = ("disable_by_file", "disable_by_files_ports", "enable_by_files")


def _healthcheck_backend(raw: str) -> str:
    value = raw.strip()
    if value and value not in HEALTHCHECK_BACKENDS:
        raise ValueError(f"unknown backend {value!r} (known: {', '.join(HEALTHCHECK_BACKENDS)})")
    return value


def _port_path(raw: str) -> str:
    port, sep, path = raw.strip().partition(":")
    if not sep or not path.strip():
        raise ValueError(f"{raw!r} is not port:path")
    _int_range(0, 65535)(port)
    return raw.strip()


def _network(raw: str) -> str:
    ipaddress.ip_network(raw.strip())
    return raw.strip()


def _opt_port(raw: str) -> int | None:
    return _int_range(0, 65535)(raw) if raw.strip() else None


@dataclass(frozen=True)
class MetricsOptions:
    """Prometheus metrics (prometheus_client), off by default."""

    enabled: bool = opt(False, _bool, "Collect metrics and serve them in Prometheus's text format.")
    bind_port: int | None = opt(
        None, _opt_port,
        "Serve /metrics on this port of bind_host, without authentication (for the scraper; keep the "
        "port private). Unset: /metrics is served on the API port, to admins only.")
    event_loop_lag_interval: float = opt(
        1.0, _float_range(0.01), "Seconds between two measures of the event loop's lag (how late a sleep wakes).")


@dataclass(frozen=True)
class HealthcheckOptions:
    """oslo.middleware's healthcheck, with its option names and answers (200/503, text, JSON or HTML
    by Accept), and streamd's own checks: the catalogue, every store, the staging and cache
    directories and their free space. Those always run; ``backends`` adds oslo.middleware's."""

    path: str = opt("/healthcheck", _str, "The path the health check answers on (oslo.middleware's).")
    detailed: bool = opt(
        False, _bool,
        "Show more detailed information (each check's details, threads, gc) to callers with the admin "
        "role; others get the plain reasons. In keystone mode an admin sends a token with the request.")
    backends: tuple[str, ...] = opt(
        ("disable_by_file",), _oslo_list(_healthcheck_backend),
        "oslo.middleware's backends to run besides streamd's own checks: disable_by_file (as Glance's "
        "paste pipeline), disable_by_files_ports, enable_by_files (not together with disable_by_file, "
        "as in oslo.middleware).")
    disable_by_file_path: str | None = opt(
        None, _opt_str,
        "disable_by_file: while this file exists the health check answers 503 DISABLED BY FILE "
        "(load balancers drain the node).")
    disable_by_file_paths: tuple[str, ...] = opt(
        (), _oslo_list(_port_path), "disable_by_files_ports: port:path pairs, a drain file per listening port.")
    enable_by_file_paths: tuple[str, ...] = opt(
        (), _list, "enable_by_files: files that must all exist, or 503 FILE PATH MISSING.")
    allowed_source_ranges: tuple[str, ...] = opt(
        (), _oslo_list(_network),
        "Networks allowed to ask; requests from other addresses are not answered by the health check (404).")
    ignore_proxied_requests: bool = opt(
        False, _bool, "Do not answer requests carrying proxy headers (X-Forwarded-*) (404).")
    check_timeout: float = opt(
        5.0, _float_range(0.1),
        "Seconds each of streamd's checks (catalogue, each store, directories) may take before it counts as failed.")
    min_free_space: int = opt(
        0, _size,
        "Free space (bytes, or with KB/MB/GB/TB) the staging and cache directories and each store "
        "must have, or the health check answers 503 (0: not checked).")


@dataclass(frozen=True)
class StagingStoreOptions:
    filesystem_store_datadir: str | None = opt(
        None, _opt_str,
        "Directory where PUT /stage and web-download keep data before import, as Glance's reserved "
        "staging store; when set it wins over node_staging_uri, as it does in a Glance with "
        "enabled_backends.")


@dataclass(frozen=True)
class ImageSignatureOptions:
    """streamd's own section: where signing certificates are found without a key manager, and what
    is checked of them (Glance 33 checks only their format and key type)."""

    certificate_dir: str | None = opt(
        None, _opt_str,
        "Directory of X.509 certificates (PEM or DER), for deployments without a key manager: an "
        "image's img_signature_certificate_uuid is the name of a file here. streamd's option; when "
        "[key_manager] names the barbican backend the certificates come from Barbican instead, as in Glance.")
    verify_certificate_dates: bool = opt(
        True, _bool,
        "Refuse a signed image whose certificate is outside its validity dates (not_valid_before, "
        "not_valid_after). Glance 33 does not check them; set false for its behaviour.")
    verify_key_usage: bool = opt(
        True, _bool,
        "Refuse a signed image whose certificate has a key usage extension without digitalSignature.")
    enable_certificate_validation: bool = opt(
        False, _bool,
        "Also require the signing certificate to chain up to one of trusted_certificate_ids (CA "
        "certificates in the same source: Barbican or certificate_dir), as cursive's verify_certificate "
        "does for Nova's trusted certificates: each CA in its dates, a CA by its basic constraints and "
        "key usage, and its path length allowing the chain.")
    trusted_certificate_ids: tuple[str, ...] = opt(
        (), _list, "Ids of the trusted CA certificates for enable_certificate_validation.")


def _key_manager_backend(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if value not in ("barbican", "castellan.key_manager.barbican_key_manager:BarbicanKeyManager"):
        raise ValueError("only barbican is available (or leave it empty for [image_signature] certificate_dir)")
    return "barbican"


@dataclass(frozen=True)
class KeyManagerOptions:
    """castellan's ``[key_manager]``: where signing certificates are kept, and the credentials
    (castellan's keystone_password) streamd asks Barbican with."""

    backend: str | None = opt(
        None, _key_manager_backend,
        "barbican: signing certificates (img_signature_certificate_uuid) are Barbican secrets, read through "
        "castellan, as in Glance. Empty: they are files in [image_signature] certificate_dir.")
    auth_type: str = opt(
        "keystone_password", _choice("keystone_password"),
        "castellan credential type: keystone_password only (streamd's service user; imports run after "
        "the request, without the caller's token).")
    auth_url: str | None = opt(None, _opt_str, "Keystone's identity URL the credentials are checked at.")
    username: str | None = opt(None, _opt_str, "User streamd reads certificates from Barbican as.")
    user_id: str | None = opt(None, _opt_str, "User id (instead of username).")
    password: str | None = opt(None, _opt_str, "Password of that user.")
    user_domain_name: str | None = opt(None, _opt_str, "Domain name of the user.")
    user_domain_id: str | None = opt(None, _opt_str, "Domain id of the user.")
    project_name: str | None = opt(None, _opt_str, "Project the token is scoped to.")
    project_id: str | None = opt(None, _opt_str, "Project id the token is scoped to.")
    project_domain_name: str | None = opt(None, _opt_str, "Domain name of the project.")
    project_domain_id: str | None = opt(None, _opt_str, "Domain id of the project.")


@dataclass(frozen=True)
class BarbicanOptions:
    """castellan's ``[barbican]`` options streamd passes on."""

    barbican_endpoint: str | None = opt(
        None, _opt_str, "Barbican's URL (default: found in Keystone's catalogue, as castellan does).")
    barbican_api_version: str | None = opt(None, _opt_str, "Barbican API version (castellan's default: v1).")
    auth_endpoint: str | None = opt(
        None, _opt_str, "Keystone URL castellan authenticates at (default: [key_manager] auth_url).")
    barbican_endpoint_type: str = opt(
        "public", _choice("public", "internal", "admin"), "Interface of Barbican's catalogue endpoint.")
    barbican_region_name: str | None = opt(None, _opt_str, "Region of Barbican's catalogue endpoint.")
    verify_ssl: bool = opt(True, _bool, "Verify Barbican's TLS certificate.")
    verify_ssl_path: str | None = opt(None, _opt_str, "CA bundle to verify Barbican's TLS certificate with.")


@dataclass(frozen=True)
class OsloPolicyOptions:
    """oslo.policy's options, with its names and meaning (streamd.policy hands them to oslo.policy)."""

    policy_file: str = opt(
        "policy.yaml", _str,
        "Policy file (YAML or JSON) overriding any of Glance's default rules, in the oslo.policy "
        "language. A relative path is taken from the directory of this configuration file. A missing "
        "file is fine while this option is left at its default; a file named here must exist. The file "
        "is re-read when it changes.")
    policy_default_rule: str = opt(
        "default", _str, "Rule applied to a rule name that has none (as oslo.policy).")
    policy_dirs: tuple[str, ...] = opt(
        ("policy.d",), _list,
        "Directories of further policy files, applied in name order after policy_file; relative "
        "paths as for policy_file; missing directories are ignored.")
    enforce_scope: bool = opt(
        True, _bool,
        "Refuse tokens whose scope (project, domain, system) a rule does not name. Glance 33 "
        "(oslo.policy 6) always does; false restores the older behaviour of ignoring scope.")
    enforce_new_defaults: bool = opt(
        True, _bool,
        "Use Glance's secure-RBAC defaults only. False also accepts each rule's deprecated default "
        "(mostly the open 'default' rule) and adds Glance's legacy owner checks.")


_ENDPOINT_INTERFACES = ("public", "publicURL", "internal", "internalURL", "admin", "adminURL")


@dataclass(frozen=True)
class OsloLimitOptions:
    """oslo.limit's ``[oslo_limit]``: the service's Keystone credentials and the endpoint its limits
    are registered for. Only the password method is offered (keystoneauth's ``password`` and
    ``v3password`` plugins); the token is scoped as the options say (project, domain or system)."""

    auth_url: str | None = opt(None, _opt_str, "Keystone's identity URL (with or without /v3).")
    auth_type: str | None = opt(
        None, lambda raw: _choice("password", "v3password")(raw) if raw.strip() else None,
        "Authentication plugin: password (or v3password), the only one streamd offers.")
    username: str | None = opt(None, _opt_str, "User name of the service user.")
    user_id: str | None = opt(None, _opt_str, "User id of the service user (instead of username).")
    password: str | None = opt(None, _opt_str, "Password of the service user.")
    user_domain_name: str | None = opt(None, _opt_str, "Domain name of the user.")
    user_domain_id: str | None = opt(None, _opt_str, "Domain id of the user.")
    project_name: str | None = opt(None, _opt_str, "Project the token is scoped to.")
    project_id: str | None = opt(None, _opt_str, "Project id the token is scoped to.")
    project_domain_name: str | None = opt(None, _opt_str, "Domain name of the project.")
    project_domain_id: str | None = opt(None, _opt_str, "Domain id of the project.")
    domain_name: str | None = opt(None, _opt_str, "Domain the token is scoped to (instead of a project).")
    domain_id: str | None = opt(None, _opt_str, "Domain id the token is scoped to (instead of a project).")
    system_scope: str | None = opt(None, _opt_str, "System scope of the token (all), instead of a project.")
    default_domain_id: str | None = opt(
        None, _opt_str, "Domain id of the user and the project when neither names its own.")
    default_domain_name: str | None = opt(
        None, _opt_str, "Domain name of the user and the project when neither names its own.")
    endpoint_id: str | None = opt(None, _opt_str, "The service's endpoint id registered in Keystone.")
    endpoint_service_type: str | None = opt(
        None, _opt_str, "Service type to find the endpoint by, when endpoint_id is not given (e.g. image).")
    endpoint_service_name: str | None = opt(None, _opt_str, "Service name to find the endpoint by.")
    endpoint_region_name: str | None = opt(None, _opt_str, "Region of the endpoint to find.")
    endpoint_interface: str = opt(
        "public", _choice(*_ENDPOINT_INTERFACES), "Interface of the endpoint to find (public, internal, admin).")
    cafile: str | None = opt(None, _opt_str, "CA bundle to verify Keystone's TLS certificate with.")
    insecure: bool = opt(False, _bool, "Do not verify Keystone's TLS certificate.")
    timeout: float | None = opt(
        None, lambda raw: _float_range(0.0)(raw) if raw.strip() else None,
        "Seconds a request to Keystone may take (default 30).")
    limits_cache_time: float = opt(
        5.0, _float_range(0.0),
        "Seconds a project's limits read from Keystone are used before they are read again (0: every "
        "check asks Keystone). streamd's option: oslo.limit reads them for every check.")


# Options of a Glance 33 glance-api.conf (streamd.glance_options, generated from Glance) that
# streamd does not implement: accepted, and named in the start-up warning with the reason.
# Section -> option -> reason; "*" is the reason of every other option of the section.
def _because(reason: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, reason)


_LOGGING = "streamd logs to stderr at the level of `streamd serve --log-level`; oslo.log is not used"
_MESSAGING = "streamd makes no RPC calls"
_RABBIT = ("oslo.messaging's RabbitMQ driver runs with its defaults here; TLS and the like go in "
           "transport_url's query (?ssl=1)")
_TOKENS_IN_PROCESS = ("streamd caches validated tokens in-process (bounded, for token_cache_time); "
                      "memcached is not used")
IGNORED_REASONS: dict[str, dict[str, str]] = {
    "DEFAULT": {
        **_because(_LOGGING, "debug", "default_log_levels", "fatal_deprecations", "instance_format",
                   "instance_uuid_format", "log_color", "log_config_append", "log_date_format", "log_dir",
                   "log_file", "log_rotate_interval", "log_rotate_interval_type", "log_rotation_type",
                   "logging_context_format_string", "logging_debug_format_suffix",
                   "logging_default_format_string", "logging_exception_prefix",
                   "logging_user_identity_format", "max_logfile_count", "max_logfile_size_mb", "publish_errors",
                   "rate_limit_burst", "rate_limit_except_level", "rate_limit_interval", "syslog_log_facility",
                   "use_journal", "use_stderr", "use_syslog", "verbose"),
        **_because(_MESSAGING, "executor_thread_pool_size", "rpc_ping_enabled", "rpc_response_timeout"),
        **_because("streamd's cache has its own index", "image_cache_driver", "image_cache_sqlite_db"),
        **_because("streamd does not debug remotely", "pydev_worker_debug_host", "pydev_worker_debug_port"),
        **_because("one event loop per process", "workers", "backlog", "tcp_keepidle", "http_keepalive",
                   "max_header_line"),
        **_because("streamd serves plain HTTP; terminate TLS in front of it", "cert_file", "key_file", "ca_file"),
        **_because("there is no registry", "registry_host", "registry_port"),
        "allow_anonymous_access": "with auth_strategy keystone every API request needs a token; with noauth "
                                  "identity comes from the X-* headers or [noauth]",
        "digest_algorithm": "streamd makes no signatures; image signatures are checked with their own "
                            "img_signature_hash_method",
        "enforce_secure_rbac": "Glance's secure RBAC defaults apply; [oslo_policy] enforce_new_defaults = false "
                               "selects the legacy ones",
        "lock_path": "streamd takes no external locks",
        "max_request_id_length": "streamd makes its own request ids",
        "metadata_encryption_key": "location URLs are kept in the catalogue unencrypted",
        "worker_self_reference_url": "nodes reach each other at peer_url",
        # The only staging area is [os_glance_staging_store] when both are set (see load_config).
        "node_staging_uri": "[os_glance_staging_store] filesystem_store_datadir is the staging area",
    },
    "database": {"*": "streamd's catalogue pool is configured by connection, pool_size and busy_timeout"},
    "glance_store": {
        "stores": "the stores are those of enabled_backends",
        "default_store": "default_backend names the default store (default_store is the single-store form)",
        "*": "single-store form of a store option: streamd reads each store's options from its own section",
    },
    "image_format": {"vmdk_allowed_types": "streamd accepts the VMDK subformats monolithicSparse and "
                                           "streamOptimized only (Glance's default)"},
    "image_import_opts": {"max_parallel_stores": "an import writes all its stores in one pass over the data"},
    "file": {
        "filesystem_store_datadirs": "a file store has one directory, filesystem_store_datadir",
        "filesystem_store_file_perm": "image files are created mode 0640",
        "filesystem_store_metadata_file": "locations carry no metadata file",
        "*": "streamd's file store has no tunable thread pool or timeout",
    },
    "swift": {
        "swift_store_config_file": "the credentials are the store's own options (swift_store_auth_address, "
                                   "swift_store_user, swift_store_key)",
        **_because("uploads stream to Swift; a failed segment fails the upload (nothing is retried from a "
                   "buffer)", "swift_buffer_on_upload", "swift_upload_buffer_dir"),
        **_because("multi-tenant mode is not supported", "swift_store_admin_tenants", "swift_store_use_trusts",
                   "swift_store_expire_soon_interval"),
        "swift_store_retry_get_count": "a read whose connection dies is reopened once at its offset",
        "swift_store_ssl_compression": "TLS compression is off (python-requests does not offer it)",
        "*": "the store authenticates with swift_store_user and swift_store_key only (no application "
             "credentials)",
    },
    "os_glance_staging_store": {"*": "Glance does not use it either"},
    "os_glance_tasks_store": {"*": "streamd keeps no task work files"},
    "keystone_authtoken": {
        **_because(_TOKENS_IN_PROCESS, "memcached_servers", "memcache_password", "memcache_pool_conn_get_timeout",
                   "memcache_pool_dead_retry", "memcache_pool_maxsize", "memcache_pool_socket_timeout",
                   "memcache_pool_unused_timeout", "memcache_sasl_enabled", "memcache_secret_key",
                   "memcache_security_strategy", "memcache_tls_allowed_ciphers", "memcache_tls_cafile",
                   "memcache_tls_certfile", "memcache_tls_enabled", "memcache_tls_keyfile",
                   "memcache_use_advanced_pool", "memcache_username", "cache"),
        "*": "streamd validates tokens at auth_url with the password of the service user "
             "(the options of other auth plugins, service catalogues and token binding are not used)",
    },
    "paste_deploy": {"*": "streamd's request pipeline is built in"},
    "oslo_policy": {"*": "remote (http:/https:) policy checks are not supported: they would block the event loop"},
    "oslo_limit": {"*": "streamd authenticates to Keystone with a password only, over its own HTTP client "
                        "(no keystoneauth session, adapter or other auth plugin options)"},
    "oslo_concurrency": {"*": "streamd takes no external locks"},
    "oslo_middleware": {"*": "the URL clients see is public_endpoint"},
    "cors": {"*": "streamd sends no CORS headers"},
    "profiler": {"*": "no osprofiler tracing"},
    "profiler_jaeger": {"*": "no osprofiler tracing"},
    "profiler_otlp": {"*": "no osprofiler tracing"},
    "task": {"*": "imports are run and kept by streamd's own import supervisor"},
    "taskflow_executor": {"*": "imports run in the daemon's event loop, not in taskflow"},
    "wsgi": {"*": "one event loop per process, no WSGI server"},
    "os_brick": {"*": "only Glance's cinder store uses os-brick"},
    "oslo_messaging_rabbit": {"*": _RABBIT},
    "oslo_messaging_kafka": {"*": "notifications go to RabbitMQ (or the log): the kafka driver is not installed"},
}
# Options of earlier Glance releases that files written for them still carry: accepted like
# Glance 33's own (the reasons above name them).
EARLIER_GLANCE_OPTIONS: dict[str, frozenset[str]] = {
    "DEFAULT": frozenset({"verbose", "workers", "backlog", "tcp_keepidle", "http_keepalive", "max_header_line",
                          "cert_file", "key_file", "ca_file", "registry_host", "registry_port",
                          "enforce_secure_rbac", "lock_path", "location_strategy"}),
    "keystone_authtoken": frozenset({"auth_uri", "signing_dir", "identity_uri", "admin_user", "admin_password",
                                     "admin_tenant_name", "auth_host", "auth_port", "auth_protocol"}),
    "store_type_location_strategy": frozenset({"store_type_preference"}),
    "oslo_policy": frozenset({"enforce_scope"}),
    "oslo_messaging_rabbit": frozenset({"heartbeat_in_pthread"}),
}


def glance_option_names(section: str, store_type: str | None = None) -> frozenset[str]:
    """The options Glance (33, or earlier for ``EARLIER_GLANCE_OPTIONS``) knows in ``section``."""
    if store_type is not None:
        return glance_options.STORE_SECTIONS.get(store_type, frozenset())
    return glance_options.SECTIONS.get(section, frozenset()) | EARLIER_GLANCE_OPTIONS.get(section, frozenset())


def ignored_reason(section: str, option: str, store_type: str | None = None) -> str:
    """Why ``option`` of ``section`` (a store's section when ``store_type``) does nothing in streamd."""
    reasons = IGNORED_REASONS.get(store_type or section, {})
    return reasons.get(option) or reasons["*"]


@dataclass(frozen=True)
class IgnoredOption:
    """An option Glance knows that the configuration sets and streamd accepts without using."""

    section: str
    option: str
    reason: str


def ignored_warning(ignored: Iterable[IgnoredOption]) -> str | None:
    """The one start-up warning naming every ignored option, options of one reason on one line."""
    by_reason: dict[tuple[str, str], list[str]] = {}
    count = 0
    for entry in ignored:
        by_reason.setdefault((entry.section, entry.reason), []).append(entry.option)
        count += 1
    if not count:
        return None
    lines = [f"{count} configuration option(s) accepted, ignored here, because:"]
    for (section, reason), options in by_reason.items():
        lines.append(f"  [{section}] {', '.join(options)}: {reason}")
    return "\n".join(lines)


@dataclass(frozen=True)
class StoreConfig:
    name: str
    type: str
    options: Any


@dataclass(frozen=True)
class Config:
    default: DefaultOptions
    noauth: NoauthOptions
    database: DatabaseOptions
    glance_store: GlanceStoreOptions
    image_format: ImageFormatOptions
    import_filtering_opts: ImportFilteringOptions
    image_import_opts: ImageImportOptions
    image_conversion: ImageConversionOptions
    inject_metadata_properties: InjectMetadataOptions
    os_glance_staging_store: StagingStoreOptions
    stores: tuple[StoreConfig, ...]
    keystone_authtoken: KeystoneAuthtokenOptions = KeystoneAuthtokenOptions()
    paste_deploy: PasteDeployOptions = PasteDeployOptions()
    oslo_policy: OsloPolicyOptions = OsloPolicyOptions()
    # Whether the files name [oslo_policy] policy_file themselves (then it must exist).
    policy_file_explicit: bool = False
    source: str | None = None
    # Every file read, in order (glance-image-import.conf first when it is there); later ones win.
    sources: tuple[str, ...] = ()
    # Options Glance knows that this configuration sets and streamd does not use.
    ignored: tuple[IgnoredOption, ...] = ()
    oslo_limit: OsloLimitOptions = field(default_factory=OsloLimitOptions)
    glance_download_properties: GlanceDownloadOptions = GlanceDownloadOptions()
    store_type_location_strategy: StoreTypeLocationStrategyOptions = StoreTypeLocationStrategyOptions()
    oslo_messaging_notifications: NotificationOptions = NotificationOptions()
    image_signature: ImageSignatureOptions = ImageSignatureOptions()
    key_manager: KeyManagerOptions = KeyManagerOptions()
    barbican: BarbicanOptions = BarbicanOptions()
    healthcheck: HealthcheckOptions = HealthcheckOptions()
    metrics: MetricsOptions = MetricsOptions()

    @property
    def warning(self) -> str | None:
        """The start-up warning naming every ignored option, or None when there is none."""
        return ignored_warning(self.ignored)

    @property
    def auth_strategy(self) -> str:
        """noauth or keystone: [DEFAULT] auth_strategy, or keystone when the paste flavor says so."""
        flavor = self.paste_deploy.flavor or ""
        return "keystone" if flavor.startswith("keystone") else self.default.auth_strategy

    # Derived values, resolved once so the rest of the code never re-derives paths.
    @property
    def data_dir(self) -> Path:
        return Path(self.default.data_dir).absolute()

    @property
    def database_url(self) -> str:
        return self.database.connection or f"sqlite+aiosqlite:///{self.data_dir / 'streamd.sqlite'}"

    @property
    def cache_dir(self) -> Path | None:
        value = self.default.image_cache_dir
        if value and value.lower() == "none":
            return None
        return Path(value).absolute() if value else self.data_dir / "cache"

    @property
    def staging_dir(self) -> Path:
        staging_store = self.os_glance_staging_store.filesystem_store_datadir
        if staging_store:
            return Path(staging_store).absolute()
        value = self.default.node_staging_uri
        if value:
            return Path(value[len("file://"):]).absolute()
        return self.data_dir / "staging"

    @property
    def admin_socket(self) -> Path:
        return Path(self.default.admin_socket_path or self.data_dir / "run" / "admin.sock").absolute()

    @property
    def host_id(self) -> str:
        import socket

        return self.default.host_id or f"{socket.gethostname()}:{self.data_dir}"

    @property
    def default_store(self) -> str:
        return self.glance_store.default_backend or self.stores[0].name

    def store(self, name: str) -> StoreConfig:
        for store in self.stores:
            if store.name == name:
                return store
        raise KeyError(name)


_SECTION_CLASSES: dict[str, type] = {
    "DEFAULT": DefaultOptions,
    "noauth": NoauthOptions,
    "database": DatabaseOptions,
    "glance_store": GlanceStoreOptions,
    "image_format": ImageFormatOptions,
    "import_filtering_opts": ImportFilteringOptions,
    "image_import_opts": ImageImportOptions,
    "image_conversion": ImageConversionOptions,
    "inject_metadata_properties": InjectMetadataOptions,
    "os_glance_staging_store": StagingStoreOptions,
    "keystone_authtoken": KeystoneAuthtokenOptions,
    "paste_deploy": PasteDeployOptions,
    "oslo_policy": OsloPolicyOptions,
    "oslo_limit": OsloLimitOptions,
    "glance_download_properties": GlanceDownloadOptions,
    "store_type_location_strategy": StoreTypeLocationStrategyOptions,
    "oslo_messaging_notifications": NotificationOptions,
    "image_signature": ImageSignatureOptions,
    "key_manager": KeyManagerOptions,
    "barbican": BarbicanOptions,
    "healthcheck": HealthcheckOptions,
    "metrics": MetricsOptions,
}
# Glance reads this file beside glance-api.conf when it is there, before it (glance.common.wsgi_app).
IMPORT_CONFIG_NAME = "glance-image-import.conf"

# The import methods there are (streamd.imports.flow runs them).
IMPORT_METHODS = ("glance-direct", "web-download", "copy-image", "glance-download")

# The import plugins there are (streamd.imports.plugins runs them): the one list of their names.
IMPORT_PLUGINS = ("image_decompression", "image_conversion", "inject_image_metadata", "no_op")


def unknown_import_plugins(names: Iterable[str]) -> list[str]:
    """A problem line for every name in ``names`` that is not an import plugin."""
    return [f"[image_import_opts] image_import_plugins: unknown plugin {name!r} (known: {', '.join(IMPORT_PLUGINS)})"
            for name in names if name not in IMPORT_PLUGINS]


def _parse_section(cls: type | None, section: str, raw: Mapping[str, str], problems: list[str],
                   ignored: list[IgnoredOption], store_type: str | None = None) -> Any:
    """``cls`` from the options of ``section``; Glance's options that ``cls`` lacks go to ``ignored``.

    With ``cls`` None (a section of Glance's that streamd has no use for) every option Glance
    knows there is ignored, and None returned.
    """
    known = {f.name: f for f in dataclasses.fields(cls)} if cls is not None else {}
    glance_known = glance_option_names(section, store_type)
    values: dict[str, Any] = {}
    for key, text in raw.items():
        if key in known:
            try:
                values[key] = known[key].metadata["parse"](text)
            except ValueError as exc:
                problems.append(f"[{section}] {key} = {text!r}: {exc}")
        elif key in glance_known:
            ignored.append(IgnoredOption(section, key, ignored_reason(section, key, store_type)))
        else:
            hint = difflib.get_close_matches(key, sorted(set(known) | glance_known), n=1)
            problems.append(f"[{section}] {key}: unknown option" + (f" (did you mean {hint[0]}?)" if hint else ""))
    return cls(**values) if cls is not None else None


def _read_files(parser: configparser.ConfigParser, path: str | os.PathLike[str]) -> list[str]:
    """Read glance-image-import.conf beside ``path`` when it is there, then ``path``: the files read.

    As in oslo.config, a later file overrides an earlier one option by option, so the main
    file wins over the import file (Glance reads them in that order too).
    """
    main = Path(path)
    files = [main.parent / IMPORT_CONFIG_NAME, main]
    if files[0].name == main.name or not files[0].is_file():
        files = [main]
    for file in files:
        try:
            with open(file, encoding="utf-8") as handle:
                parser.read_file(handle, source=str(file))
        except OSError as exc:
            raise ConfigError([f"cannot read {file}: {exc.strerror}"]) from exc
        except configparser.Error as exc:
            raise ConfigError([f"{file}: {exc}"]) from exc
    return [str(file) for file in files]


def _ini_value(raw: str) -> str:
    """A value as oslo.config's ini parser reads it: stripped, and one pair of enclosing quotes removed."""
    value = raw.strip()
    if value and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value


def _apply_deprecated_names(sections: dict[str, dict[str, str]]) -> None:
    """Move options spelled by a deprecated name to the current one, as oslo.config reads them."""
    for (old_section, old_name), (section, name) in glance_options.DEPRECATED.items():
        value = sections.get(old_section, {}).pop(old_name, None)
        if value is not None:
            sections.setdefault(section, {}).setdefault(name, value)


def load_config(path: str | os.PathLike[str] | None = None, *, overrides: Mapping[str, Mapping[str, str]] | None = None) -> Config:
    """Read, validate and freeze the configuration.

    ``path`` is a glance-api.conf-shaped file; a glance-image-import.conf in the same
    directory is read first, as Glance does, and ``path`` overrides it. ``overrides`` maps
    section -> option -> raw string and wins over the files; tests and the command line use
    it. Every option a Glance 33 glance-api.conf may hold is accepted: the ones streamd
    implements are honoured, the others end up in ``Config.ignored`` (and its start-up
    ``warning``). Raises ``ConfigError`` naming every wrong option at once.
    """
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__", strict=False)
    parser.optionxform = str  # option names are case-sensitive in oslo.config
    problems: list[str] = []
    ignored: list[IgnoredOption] = []
    sources = _read_files(parser, path) if path is not None else []
    for section, options in (overrides or {}).items():
        if not parser.has_section(section):
            parser.add_section(section)
        for key, value in options.items():
            parser.set(section, key, value)

    sections = {name: {key: _ini_value(value) for key, value in parser.items(name)} for name in parser.sections()}
    _apply_deprecated_names(sections)
    parsed: dict[str, Any] = {}
    for name, cls in _SECTION_CLASSES.items():
        parsed[name] = _parse_section(cls, name, sections.get(name, {}), problems, ignored)

    default: DefaultOptions = parsed["DEFAULT"]
    stores: list[StoreConfig] = []
    for store_name, kind in default.enabled_backends:
        options = _parse_section(STORE_OPTION_CLASSES[kind], store_name, sections.get(store_name, {}), problems,
                                 ignored, store_type=kind)
        stores.append(StoreConfig(store_name, kind, options))

    store_names = {s.name for s in stores}
    glance_sections = set(glance_options.SECTIONS) | set(EARLIER_GLANCE_OPTIONS)
    for name in sorted(set(sections) - set(_SECTION_CLASSES) - store_names):
        if name in glance_sections:
            _parse_section(None, name, sections[name], problems, ignored)
            continue
        hint = difflib.get_close_matches(name, list(_SECTION_CLASSES) + sorted(store_names), n=1)
        problems.append(f"[{name}]: unknown section" + (f" (did you mean [{hint[0]}]?)" if hint else ""))

    glance_store: GlanceStoreOptions = parsed["glance_store"]
    if glance_store.default_backend is not None and glance_store.default_backend not in store_names:
        problems.append(f"[glance_store] default_backend = {glance_store.default_backend!r}: "
                        f"not one of enabled_backends ({', '.join(sorted(store_names))})")
    for s in stores:
        if s.type == "s3":
            for required in ("s3_store_host", "s3_store_access_key", "s3_store_secret_key", "s3_store_bucket"):
                if not getattr(s.options, required):
                    problems.append(f"[{s.name}] {required}: an s3 store needs it")
        if s.type == "swift":
            for required in ("swift_store_auth_address", "swift_store_user", "swift_store_key"):
                if not getattr(s.options, required):
                    problems.append(f"[{s.name}] {required}: a swift store needs it")
            if s.options.swift_store_multi_tenant:
                problems.append(f"[{s.name}] swift_store_multi_tenant = true: not supported (images in the "
                                "requesting project's Swift account, with its token); streamd stores every image "
                                "in the account of swift_store_user")
            user = s.options.swift_store_user or ""
            if s.options.swift_store_auth_version == "3" and user and ":" not in user:
                problems.append(f"[{s.name}] swift_store_user = {user!r}: Keystone auth needs PROJECT:USER")
    read_only = [s.name for s in stores if s.type == "http"]
    default_store = glance_store.default_backend or (stores[0].name if stores else None)
    if default_store in read_only:
        problems.append(f"[glance_store] default_backend = {default_store!r}: an http store is read-only, "
                        "it cannot be the default store")
    if default.peer_url and not default.peer_token:
        problems.append("[DEFAULT] peer_url: needs peer_token, the secret peers present to each other")
    if default.limit_param_default > default.api_limit_max:
        problems.append("[DEFAULT] limit_param_default: must not exceed api_limit_max")
    keystone: KeystoneAuthtokenOptions = parsed["keystone_authtoken"]
    paste: PasteDeployOptions = parsed["paste_deploy"]
    if default.auth_strategy == "keystone" or (paste.flavor or "").startswith("keystone"):
        problems += _keystone_problems(keystone)
    fmt: ImageFormatOptions = parsed["image_format"]
    if not fmt.disk_formats:
        problems.append("[image_format] disk_formats: must name at least one format")
    if not fmt.container_formats:
        problems.append("[image_format] container_formats: must name at least one format")
    if default.node_staging_uri and not default.node_staging_uri.startswith("file:///"):
        problems.append(f"[DEFAULT] node_staging_uri = {default.node_staging_uri!r}: must be a file:/// URI")
    staging_store: StagingStoreOptions = parsed["os_glance_staging_store"]
    if staging_store.filesystem_store_datadir and default.node_staging_uri:
        ignored.append(IgnoredOption("DEFAULT", "node_staging_uri", ignored_reason("DEFAULT", "node_staging_uri")))
    problems += _limits_problems(default, parsed["oslo_limit"])
    key_manager: KeyManagerOptions = parsed["key_manager"]
    if key_manager.backend == "barbican":
        if not key_manager.auth_url:
            problems.append("[key_manager] auth_url: needed with backend = barbican")
        if not (key_manager.username or key_manager.user_id) or not key_manager.password:
            problems.append("[key_manager] username (or user_id) and password: needed with backend = barbican")
    problems += unknown_import_plugins(parsed["image_import_opts"].image_import_plugins)
    for method in default.enabled_import_methods:
        if method not in IMPORT_METHODS:
            problems.append(f"[DEFAULT] enabled_import_methods: unknown method {method!r}")

    health: HealthcheckOptions = parsed["healthcheck"]
    if {"disable_by_file", "enable_by_files"} <= set(health.backends):
        problems.append("[healthcheck] backends: `enable_by_files` plugin and `disable_by_file` plugin should not "
                        "be enabled at the same time (as oslo.middleware)")
    if not health.path.startswith("/"):
        problems.append(f"[healthcheck] path = {health.path!r}: must start with /")
    metrics_options: MetricsOptions = parsed["metrics"]
    if metrics_options.bind_port is not None and metrics_options.bind_port == default.bind_port != 0:
        problems.append(f"[metrics] bind_port = {metrics_options.bind_port}: the API's own port ([DEFAULT] bind_port); "
                        "leave it unset to serve /metrics on the API port")

    if problems:
        raise ConfigError(problems)
    return Config(default=default, noauth=parsed["noauth"], database=parsed["database"],
                  glance_store=glance_store, image_format=fmt,
                  import_filtering_opts=parsed["import_filtering_opts"], image_import_opts=parsed["image_import_opts"],
                  image_conversion=parsed["image_conversion"],
                  inject_metadata_properties=parsed["inject_metadata_properties"],
                  os_glance_staging_store=staging_store, stores=tuple(stores),
                  keystone_authtoken=keystone, paste_deploy=paste,
                  oslo_policy=parsed["oslo_policy"],
                  policy_file_explicit="policy_file" in sections.get("oslo_policy", {}),
                  source=str(path) if path is not None else None, sources=tuple(sources), ignored=tuple(ignored),
                  oslo_limit=parsed["oslo_limit"], glance_download_properties=parsed["glance_download_properties"],
                  store_type_location_strategy=parsed["store_type_location_strategy"],
                  oslo_messaging_notifications=parsed["oslo_messaging_notifications"],
                  image_signature=parsed["image_signature"], key_manager=parsed["key_manager"],
                  barbican=parsed["barbican"],
                  healthcheck=health, metrics=metrics_options)


def _limits_problems(default: DefaultOptions, limits: OsloLimitOptions) -> list[str]:
    """What use_keystone_limits needs from [oslo_limit]: Glance finds out at the first image created,
    streamd at start-up (and check-config)."""
    if not default.use_keystone_limits:
        return []
    problems = []
    if not limits.auth_url:
        problems.append("[oslo_limit] auth_url: needed with use_keystone_limits = true")
    if not (limits.username or limits.user_id) or not limits.password:
        problems.append("[oslo_limit] username (or user_id) and password: needed with use_keystone_limits = true")
    if not (limits.endpoint_id or limits.endpoint_service_type or limits.endpoint_service_name):
        problems.append("[oslo_limit] endpoint_id, or endpoint_service_type / endpoint_service_name: needed with "
                        "use_keystone_limits = true (which endpoint the limits are registered for)")
    return problems


def _keystone_problems(options: KeystoneAuthtokenOptions) -> list[str]:
    """What keystone mode needs: where Keystone is, and the service user's password credentials."""
    problems = []
    if not options.auth_url:
        problems.append("[keystone_authtoken] auth_url: needed with auth_strategy keystone")
    elif not options.auth_url.startswith(("http://", "https://")):
        problems.append(f"[keystone_authtoken] auth_url = {options.auth_url!r}: must be an http:// or https:// URL")
    if not (options.username or options.user_id):
        problems.append("[keystone_authtoken] username: needed with auth_strategy keystone (or user_id)")
    if options.username and not options.user_id and not (options.user_domain_name or options.user_domain_id):
        problems.append("[keystone_authtoken] user_domain_name: needed with username (or user_domain_id)")
    if not options.password:
        problems.append("[keystone_authtoken] password: needed with auth_strategy keystone")
    if not (options.project_name or options.project_id):
        problems.append("[keystone_authtoken] project_name: needed with auth_strategy keystone (or project_id)")
    if options.project_name and not options.project_id and not (
            options.project_domain_name or options.project_domain_id):
        problems.append("[keystone_authtoken] project_domain_name: needed with project_name (or project_domain_id)")
    return problems


def _render_default(f: dataclasses.Field[Any]) -> str:
    value = f.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        text = ",".join(":".join(v) if isinstance(v, tuple) else str(v) for v in value)
        # Glance refuses these lists without their brackets: write them so the file suits both.
        return f"[{text}]" if getattr(f.metadata["parse"], "bracketed", False) else text
    return str(value)


def render_example() -> str:
    """The documented example configuration: every option, its help and default."""
    import textwrap

    lines = [
        "# streamd configuration, in the shape of glance-api.conf.",
        "# Every option is shown with its default, commented out. Option names are",
        "# Glance's wherever the meaning is the same.",
        "# Generated by `streamd config-example`; tests check it is up to date.",
        "#",
        "# A glance-api.conf written for Glance 33 loads as it is: the options streamd",
        "# does not use are accepted and named, with the reason, in one warning at",
        "# start-up (and by `streamd check-config`). A glance-image-import.conf in the",
        "# same directory is read first; options in this file override it.",
    ]

    def section(title: str, cls: type, note: str | None = None) -> None:
        lines.append("")
        lines.append(f"[{title}]")
        if note:
            lines.extend(textwrap.wrap(note, 76, initial_indent="# ", subsequent_indent="# "))
        for f in dataclasses.fields(cls):
            lines.append("")
            lines.extend(textwrap.wrap(f.metadata["help"], 76, initial_indent="# ", subsequent_indent="# "))
            lines.append(f"#{f.name} = {_render_default(f)}")

    for title, cls in _SECTION_CLASSES.items():
        section(title, cls)
    section("fs", FileStoreOptions,
            "One section per store named in enabled_backends; this one is for the default "
            "store 'fs' of type file.")
    section("rbd", RbdStoreOptions,
            "A Ceph RBD store: enable it by naming it in enabled_backends, e.g. fs:file,rbd:rbd (the "
            "section takes the store's name). Needs Debian's python3-rados and python3-rbd.")
    section("s3", S3StoreOptions,
            "An S3 store (Amazon S3, Ceph's RADOS Gateway or another S3 server): enable it as e.g. "
            "fs:file,s3:s3. Locations are s3://host/bucket/image (s3+https:// for https endpoints), "
            "without the credentials.")
    section("swift", SwiftStoreOptions,
            "A Swift store (OpenStack Swift or Ceph's RADOS Gateway): enable it as e.g. fs:file,swift:swift. "
            "Locations are swift+http(s)://AUTH_ADDRESS/container/image, without the credentials.")
    section("web", HttpStoreOptions,
            "A read-only http store (glance_store's http): images whose data stays on web servers, "
            "added as http(s) locations. Enable it as e.g. fs:file,web:http.")
    lines.append("")
    return "\n".join(lines)


def render_option_map() -> str:
    """The generated part of docs/migrating-from-glance.md (Markdown): for every section of a Glance 33
    glance-api.conf, the options streamd honours under the same name, and those it accepts and
    ignores, with the reason (``IGNORED_REASONS``, the start-up warning's); then streamd's own options.
    ``scripts/migration_doc.py`` writes it into the document; tests check it is up to date."""

    def names(items: Iterable[str]) -> str:
        return ", ".join(f"`{n}`" for n in sorted(items))

    def block(title: str, cls: type | None, section: str, store_type: str | None = None) -> list[str]:
        glance = glance_option_names(section, store_type)
        ours = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
        out = ["", f"### {title}", ""]
        same = glance & ours
        if same:
            out.append(f"- **Honoured, under Glance's name** ({len(same)}): {names(same)}")
        by_reason: dict[str, list[str]] = {}
        for option in sorted(glance - ours):
            by_reason.setdefault(ignored_reason(section, option, store_type), []).append(option)
        if by_reason:
            out.append(f"- **Accepted, ignored** ({len(glance - ours)}):")
            for reason, options in by_reason.items():
                out.append(f"  - {names(options)}: {reason}")
        own = ours - glance
        if own:
            out.append(f"- **streamd's own** ({len(own)}, see etc/streamd.conf.example): {names(own)}")
        return out

    lines = ["<!-- generated by scripts/migration_doc.py from streamd.config and streamd.glance_options: "
             "do not edit by hand -->"]
    for section, cls in _SECTION_CLASSES.items():
        if section in glance_options.SECTIONS:
            lines += block(f"[{section}]", cls, section)
    for store_type, cls in STORE_OPTION_CLASSES.items():
        lines += block(f"A store of type `{store_type}` (its section is the store's name in enabled_backends)",
                       cls, store_type, store_type)
    unsupported = sorted(set(glance_options.STORE_SECTIONS) - set(STORE_OPTION_CLASSES))
    lines += ["", "### Store types streamd does not have", "",
              f"{names(unsupported)}: an `enabled_backends` entry of these types is refused at start-up "
              f"(streamd's are {names(STORE_OPTION_CLASSES)})."]
    others = sorted(set(glance_options.SECTIONS) - set(_SECTION_CLASSES))
    lines += ["", "### Sections streamd reads nothing from", ""]
    for section in others:
        lines.append(f"- `[{section}]` ({len(glance_option_names(section))} options): {IGNORED_REASONS[section]['*']}"
                     if set(IGNORED_REASONS.get(section, {})) == {"*"} else
                     f"- `[{section}]`: " + "; ".join(f"{names(o)}: {r}" for r, o in _group(section).items()))
    lines.append("")
    return "\n".join(lines)


def _group(section: str) -> dict[str, list[str]]:
    by_reason: dict[str, list[str]] = {}
    for option in sorted(glance_option_names(section)):
        by_reason.setdefault(ignored_reason(section, option), []).append(option)
    return by_reason
