"""The web-download URI filter: Glance's import_filtering_opts rules, its SSRF hardening, and ours.

Every case is (options, URI, expected): expected is None when the URI may be fetched, or a
piece of the message that must name the rule that refused it. All checks are syntactic:
nothing here touches the network.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from streamd.status import status_of
from streamd.config import ImportFilteringOptions
from streamd.errors import InvalidRequest, DisallowedAddress, StreamdError
from streamd.imports import UriFilter, normalize_hostname

# Glance's defaults, spelled out: http/https, any host, ports 80 and 443 when named.
GLANCE_DEFAULTS = ImportFilteringOptions(
    allowed_schemes=("http", "https"), disallowed_schemes=(), allowed_hosts=(), disallowed_hosts=(),
    allowed_ports=(80, 443), disallowed_ports=(), allow_private_networks=False)
# The example of the Glance documentation this feature was specified from.
SEED = replace(GLANCE_DEFAULTS, allowed_schemes=("http", "https", "ftp"))
OPEN = replace(GLANCE_DEFAULTS, allowed_schemes=(), allowed_ports=())


def _opts(base: ImportFilteringOptions = GLANCE_DEFAULTS, **changes: object) -> ImportFilteringOptions:
    return replace(base, **changes)  # type: ignore[arg-type]


CASES: list[tuple[str, ImportFilteringOptions, str, str | None]] = [
    # -- the seed example: no port means no port check ---------------------------------------
    ("seed ftp without port", SEED, "ftp://example.org/some/resource", None),
    ("seed ftp port 21", SEED, "ftp://example.org:21/some/resource", "port 21 is not allowed"),
    ("seed http port 80", SEED, "http://example.org:80/some/resource", None),
    ("seed https port 443", SEED, "https://example.org:443/x", None),
    ("seed gopher", SEED, "gopher://example.org/x", "scheme 'gopher' is not allowed (not in allowed_schemes)"),
    # -- schemes ------------------------------------------------------------------------------
    ("defaults http", GLANCE_DEFAULTS, "http://example.org/image.qcow2", None),
    ("defaults https", GLANCE_DEFAULTS, "https://example.org/image.qcow2", None),
    ("defaults ftp", GLANCE_DEFAULTS, "ftp://example.org/image", "scheme 'ftp' is not allowed (not in allowed_schemes)"),
    ("scheme case-insensitive", GLANCE_DEFAULTS, "HTTP://example.org/x", None),
    ("scheme deny list alone", _opts(allowed_schemes=(), disallowed_schemes=("ftp", "file")),
     "ftp://example.org/x", "scheme 'ftp' is not allowed (in disallowed_schemes)"),
    ("scheme deny list alone, other scheme", _opts(allowed_schemes=(), disallowed_schemes=("ftp",)),
     "gopher://example.org/x", None),
    ("scheme allow beats deny", _opts(allowed_schemes=("http",), disallowed_schemes=("http",)),
     "http://example.org/x", None),
    ("scheme allow beats deny, unlisted", _opts(allowed_schemes=("http",), disallowed_schemes=("http",)),
     "https://example.org/x", "scheme 'https' is not allowed (not in allowed_schemes)"),
    ("scheme lists empty", _opts(allowed_schemes=()), "s3://example.org/bucket", None),
    ("no scheme", GLANCE_DEFAULTS, "example.org/image", "no scheme"),
    ("no scheme, network path", GLANCE_DEFAULTS, "//example.org/image", "no scheme"),
    ("no scheme even with empty lists", OPEN, "/etc/passwd", "no scheme"),
    ("empty", GLANCE_DEFAULTS, "", "empty"),
    # -- hosts -------------------------------------------------------------------------------
    ("host allow list", _opts(allowed_hosts=("example.org",)), "http://example.org/x", None),
    ("host allow list, case", _opts(allowed_hosts=("example.org",)), "http://EXAMPLE.ORG/x", None),
    ("host allow list, trailing dot", _opts(allowed_hosts=("example.org",)), "http://example.org./x", None),
    ("host allow list, other host", _opts(allowed_hosts=("example.org",)), "http://example.com/x",
     "host 'example.com' is not allowed (not in allowed_hosts)"),
    ("host deny list alone", _opts(disallowed_hosts=("evil.example",)), "http://evil.example/x",
     "host 'evil.example' is not allowed (in disallowed_hosts)"),
    ("host deny list, case and trailing dot", _opts(disallowed_hosts=("evil.example",)), "http://EVIL.example./x",
     "in disallowed_hosts"),
    ("host deny list, other host", _opts(disallowed_hosts=("evil.example",)), "http://good.example/x", None),
    ("host allow beats deny", _opts(allowed_hosts=("example.org",), disallowed_hosts=("example.org",)),
     "http://example.org/x", None),
    ("host deny list, IP literal", _opts(disallowed_hosts=("8.8.8.8",)), "http://8.8.8.8/x",
     "host '8.8.8.8' is not allowed (in disallowed_hosts)"),
    ("host allow list, IPv6 spelled differently", _opts(allowed_hosts=("2606:4700:0:0::1111",)),
     "http://[2606:4700::1111]/x", None),
    ("no host", GLANCE_DEFAULTS, "http:///image", "no host"),
    ("no host, file", OPEN, "file:///etc/passwd", "no host"),
    ("host with a space", GLANCE_DEFAULTS, "http://exa mple.org/x", "not a valid host name"),
    ("host with an empty label", GLANCE_DEFAULTS, "http://example..org/x", "not a valid host name"),
    ("host label starting with a hyphen", GLANCE_DEFAULTS, "http://-bad.example/x", "not a valid host name"),
    ("percent-encoded host", GLANCE_DEFAULTS, "http://%31%32%37.0.0.1/x", "not a valid host name"),
    ("IDN host", GLANCE_DEFAULTS, "http://bücher.example/x", None),
    # -- ports -------------------------------------------------------------------------------
    ("defaults port 8080", GLANCE_DEFAULTS, "http://example.org:8080/x", "port 8080 is not allowed (not in allowed_ports)"),
    ("port deny list alone", _opts(allowed_ports=(), disallowed_ports=(21, 25)), "http://example.org:25/x",
     "port 25 is not allowed (in disallowed_ports)"),
    ("port deny list alone, other port", _opts(allowed_ports=(), disallowed_ports=(21,)), "http://example.org:8080/x", None),
    ("port deny list, no port", _opts(allowed_ports=(), disallowed_ports=(80,)), "http://example.org/x", None),
    ("port allow beats deny", _opts(allowed_ports=(8080,), disallowed_ports=(8080,)), "http://example.org:8080/x", None),
    ("port allow beats deny, unlisted", _opts(allowed_ports=(8080,), disallowed_ports=(8080,)),
     "http://example.org:80/x", "port 80 is not allowed (not in allowed_ports)"),
    ("port lists empty", _opts(allowed_ports=()), "http://example.org:65535/x", None),
    ("port zero is checked", GLANCE_DEFAULTS, "http://example.org:0/x", "port 0 is not allowed"),
    ("port out of range", GLANCE_DEFAULTS, "http://example.org:99999/x", "malformed"),
    ("port not a number", GLANCE_DEFAULTS, "http://example.org:http/x", "malformed"),
    # -- numeric and encoded IP forms (Glance 33's SSRF fix), refused whatever the policy -----
    *[(f"encoded {host}", OPEN, f"http://{host}/x", "not a valid host name")
      for host in ("2130706433", "127.1", "10.1", "1.2.3", "1.2.3.4.5", "0177.0.0.1", "017700000001",
                   "0x7f.0.0.1", "0x7f000001", "0X7F000001", "127.0.0.0x1", "127.0x0.0.1", "0x", "127.0.0.1.",
                   "08.8.8.8")],
    # -- canonical literals pass the syntax; the private-network rule then applies -------------
    ("IPv4 literal, private allowed", _opts(allow_private_networks=True), "http://127.0.0.1/x", None),
    ("IPv6 literal, private allowed", _opts(allow_private_networks=True), "http://[::1]/x", None),
    ("IPv4 global literal", GLANCE_DEFAULTS, "http://8.8.8.8/x", None),
    ("IPv6 global literal", GLANCE_DEFAULTS, "http://[2606:4700::1111]/x", None),
    ("IPv4 loopback literal", GLANCE_DEFAULTS, "http://127.0.0.1/x", "not a global address"),
    ("IPv6 loopback literal", GLANCE_DEFAULTS, "http://[::1]/x", "not a global address"),
    ("IPv4-mapped loopback", GLANCE_DEFAULTS, "http://[::ffff:127.0.0.1]/x", "not a global address"),
    ("IPv4-mapped global", GLANCE_DEFAULTS, "http://[::ffff:8.8.8.8]/x", None),
    ("metadata service", GLANCE_DEFAULTS, "http://169.254.169.254/latest/meta-data/", "not a global address"),
    ("private literal", GLANCE_DEFAULTS, "http://10.0.0.1/x", "not a global address"),
    # -- names: syntax only, no DNS (the resolved address is the downloader's business) ---------
    *[(f"name {host}", GLANCE_DEFAULTS, f"http://{host}/x", None)
      for host in ("example.org", "localhost", "my_host.example", "0x7f.example", "1e100.net", "xn--bcher-kva.de",
                   "a-b.c-d.example")],
]


@pytest.mark.parametrize(("options", "uri", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_filter_rules(options: ImportFilteringOptions, uri: str, expected: str | None) -> None:
    uri_filter = UriFilter(options)
    if expected is None:
        uri_filter.check(uri)
        return
    with pytest.raises(InvalidRequest) as refused:
        uri_filter.check(uri)
    assert expected in refused.value.message
    assert status_of(refused.value) == 400


def test_private_literals_raise_disallowed_address() -> None:
    """The private-network refusal of a literal is the address error, still a 400 for the API."""
    with pytest.raises(DisallowedAddress) as refused:
        UriFilter(GLANCE_DEFAULTS).check("http://127.0.0.1/x")
    assert isinstance(refused.value, InvalidRequest) and isinstance(refused.value, StreamdError)
    assert status_of(refused.value) == 400
    # The syntax refusal of an encoded form is not an address error: it never got that far.
    with pytest.raises(InvalidRequest) as encoded:
        UriFilter(GLANCE_DEFAULTS).check("http://0x7f000001/x")
    assert not isinstance(encoded.value, DisallowedAddress)


REFUSED_ADDRESSES = [
    "127.0.0.1", "127.255.255.254", "::1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "::", "224.0.0.1", "239.255.255.250", "ff02::1", "fe80::1", "fe80::1%eth0",
    "fc00::1", "fd12:3456::1", "fec0::1", "240.0.0.1", "255.255.255.255", "2001:db8::1", "192.0.2.1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1", "2002:7f00:1::1",
    "::127.0.0.1", "localhost", "example.org", "2130706433", "",
]
ALLOWED_ADDRESSES = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                     "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("ip", REFUSED_ADDRESSES)
def test_check_address_refuses_non_global(ip: str) -> None:
    with pytest.raises(DisallowedAddress):
        UriFilter(GLANCE_DEFAULTS).check_address(ip)


@pytest.mark.parametrize("ip", ALLOWED_ADDRESSES)
def test_check_address_allows_global(ip: str) -> None:
    UriFilter(GLANCE_DEFAULTS).check_address(ip)


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "10.0.0.1", "::ffff:127.0.0.1", "169.254.169.254"])
def test_check_address_with_private_networks_allowed(ip: str) -> None:
    UriFilter(_opts(allow_private_networks=True)).check_address(ip)


@pytest.mark.parametrize(("host", "normalized"), [
    ("EXAMPLE.org.", "example.org"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("127.0.0.1", "127.0.0.1"),
    ("2606:4700:0:0:0:0:0:1111", "2606:4700::1111"),
    ("0x7f000001", None),
    ("127.1", None),
    ("", None),
    (None, None),
])
def test_normalize_hostname(host: str | None, normalized: str | None) -> None:
    assert normalize_hostname(host) == normalized
