"""The no-auth default is for loopback: a noauth daemon on a network address refuses to start.

In noauth mode the caller is whoever the ``X-Roles`` header says, admin included; on a
loopback address only local processes can say so. Anywhere else it takes
``[DEFAULT] allow_noauth_on_network = true`` to start, so an exposed no-auth API is
always a decision written in the configuration, never an accident.
"""

from __future__ import annotations

import ipaddress
import socket

from ..config import Config
from ..errors import ConfigError


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is loopback only: every address it resolves to."""
    if not host:
        return False  # an empty bind_host binds every interface
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return False  # binding will fail anyway; say nothing about it here
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)


def check_noauth_exposure(config: Config) -> None:
    """``ConfigError`` when the daemon would serve noauth on a non-loopback address unasked."""
    host = config.default.bind_host
    if config.auth_strategy != "noauth" or config.default.allow_noauth_on_network or is_loopback(host):
        return
    raise ConfigError([
        f"[DEFAULT] bind_host = {host!r} is not a loopback address and auth_strategy is noauth: anyone who "
        f"can reach the port could act as any project, admin included. Set auth_strategy = keystone "
        f"(with [keystone_authtoken]), bind to 127.0.0.1, or set allow_noauth_on_network = true if a "
        f"proxy in front authenticates every request."])
