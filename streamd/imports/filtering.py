"""Which URIs web-download may fetch: Glance's ``[import_filtering_opts]``, hardened against SSRF.

``UriFilter.check`` is what ``POST /v2/images/{id}/import`` runs on a web-download URI
before accepting it, and what the downloader runs again on every redirect target. It
follows Glance's ``validate_import_uri``:

* refuse a URI without a scheme, a scheme not in a non-empty ``allowed_schemes`` or in
  ``disallowed_schemes``;
* refuse a host that does not normalize (see below), a host not in a non-empty
  ``allowed_hosts`` or in ``disallowed_hosts``;
* refuse a port the URI *names* that is not in a non-empty ``allowed_ports`` or is in
  ``disallowed_ports``. A URI without an explicit port skips the port check;
* in each of the three dimensions, when both lists are set the deny list is ignored.

Host normalization follows Glance 33's SSRF fix: canonical IPv4/IPv6 literals are
accepted, while the numeric spellings that ``inet_aton`` and friends still map onto an
address (``2130706433``, ``127.1``, ``0177.0.0.1``, ``0x7f000001``) are refused. Glance
rejects the hex and octal forms by demanding that the name resolves in DNS; we refuse
them syntactically instead (a name whose last label is a number cannot be a DNS name,
RFC 3696 section 2 and the WHATWG URL "ends in a number" rule), so the check needs no
network and cannot be steered by a resolver.

Beyond Glance, ``allow_private_networks`` (default false) keeps web-download away from
loopback, link-local, private and every other non-global address. ``check`` applies it
to IP literals in the URI; ``check_address`` is the same rule for an address a name
resolved to, which the downloader applies to the address it actually connects to.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from ..config import ImportFilteringOptions
from ..errors import InvalidRequest, DisallowedAddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# One DNS label: letters, digits, hyphens (and underscores, which real zones contain),
# not starting or ending with a hyphen, at most 63 characters.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A label that inet_aton or a WHATWG URL parser reads as a number: decimal, octal
# (leading zero, still digits) or hex with a 0x prefix, even an empty one.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_MAX_HOSTNAME = 253

# NAT64's well-known prefix (RFC 6052): the gateway connects to the embedded IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def normalize_hostname(host: str | None) -> str | None:
    """The canonical form of ``host``, or None when it is no acceptable host.

    IP literals come back in ``ipaddress``'s canonical spelling; names come back
    lower-cased, IDNA-encoded and without a trailing dot. Numeric or encoded IP forms
    give None, without any DNS lookup.
    """
    if not host:
        return None
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        pass
    name = host.lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    # "example.org." names the same host as "example.org"; without this a trailing dot
    # would step around disallowed_hosts.
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > _MAX_HOSTNAME:
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    # All-digit names, short forms (127.1) and hex/octal spellings all end in a numeric
    # label; no real top-level domain does.
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    return name


def ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a canonical IPv4/IPv6 literal, else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_global_address(address: IPAddress) -> bool:
    """Whether ``address`` is a global unicast address web-download may reach by default.

    An IPv6 address that stands for an IPv4 one (IPv4-mapped, NAT64) is judged by that
    IPv4 address; a 6to4 address must be global and embed a global IPv4 address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_global_address(address.ipv4_mapped)
        if address in _NAT64:
            return is_global_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and not is_global_address(address.sixtofour):
            return False
        if address.is_site_local:
            return False
    # ipaddress counts multicast and some reserved blocks as global; none of them is a
    # web server on the internet.
    return (address.is_global and not address.is_multicast and not address.is_reserved
            and not address.is_private and not address.is_loopback and not address.is_link_local
            and not address.is_unspecified)


def _normalized_hosts(hosts: tuple[str, ...]) -> frozenset[str]:
    # Configured entries are compared in the same spelling as the URI's host. An entry that
    # does not normalize is kept as written: no URI host can normalize to it, so it matches
    # nothing, which is what such an entry can mean.
    return frozenset(normalize_hostname(host) or host.lower() for host in hosts)


class UriFilter:
    """The web-download URI policy of one configuration (``[import_filtering_opts]``)."""

    def __init__(self, options: ImportFilteringOptions) -> None:
        self.allow_private_networks = options.allow_private_networks
        self._allowed_schemes = frozenset(scheme.lower() for scheme in options.allowed_schemes)
        # Glance: when both lists of a dimension are set, only the allow list counts.
        self._disallowed_schemes = (frozenset() if self._allowed_schemes
                                    else frozenset(scheme.lower() for scheme in options.disallowed_schemes))
        self._allowed_hosts = _normalized_hosts(options.allowed_hosts)
        self._disallowed_hosts = (frozenset() if self._allowed_hosts
                                  else _normalized_hosts(options.disallowed_hosts))
        self._allowed_ports = frozenset(options.allowed_ports)
        self._disallowed_ports = frozenset() if self._allowed_ports else frozenset(options.disallowed_ports)

    def check(self, uri: str) -> None:
        """Raise ``InvalidRequest`` naming the rule that refuses ``uri``; return if it may be fetched."""
        if not uri:
            raise InvalidRequest("the URI is empty")
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError as exc:
            raise InvalidRequest(f"the URI is malformed: {exc}") from exc

        scheme = parts.scheme.lower()
        if not scheme:
            raise InvalidRequest("the URI has no scheme")
        if self._allowed_schemes and scheme not in self._allowed_schemes:
            raise InvalidRequest(f"scheme {scheme!r} is not allowed (not in allowed_schemes)")
        if scheme in self._disallowed_schemes:
            raise InvalidRequest(f"scheme {scheme!r} is not allowed (in disallowed_schemes)")

        if not parts.hostname:
            raise InvalidRequest("the URI has no host")
        host = normalize_hostname(parts.hostname)
        if host is None:
            raise InvalidRequest(f"host {parts.hostname!r} is not a valid host name or canonical IP address "
                             "(numeric and encoded IP forms are refused)")
        if self._allowed_hosts and host not in self._allowed_hosts:
            raise InvalidRequest(f"host {host!r} is not allowed (not in allowed_hosts)")
        if host in self._disallowed_hosts:
            raise InvalidRequest(f"host {host!r} is not allowed (in disallowed_hosts)")

        # Glance skips the check for port 0 too (``if port and ...``); ":0" is named, so we check it.
        if port is not None:
            if self._allowed_ports and port not in self._allowed_ports:
                raise InvalidRequest(f"port {port} is not allowed (not in allowed_ports)")
            if port in self._disallowed_ports:
                raise InvalidRequest(f"port {port} is not allowed (in disallowed_ports)")

        if ip_literal(host) is not None:
            self.check_address(host)

    def check_address(self, ip: str) -> None:
        """Raise ``DisallowedAddress`` unless web-download may connect to the address ``ip``.

        Every address passes when ``allow_private_networks`` is set; otherwise only global
        unicast addresses do. Text that is no IP address is refused, never guessed at.
        """
        if self.allow_private_networks:
            return
        address = ip_literal(ip)
        if address is None:
            raise DisallowedAddress(f"{ip!r} is not an IP address web-download can check")
        if not is_global_address(address):
            raise DisallowedAddress(
                f"address {ip} is not a global address (loopback, private, link-local, multicast, "
                "reserved or unspecified) and allow_private_networks is false")
