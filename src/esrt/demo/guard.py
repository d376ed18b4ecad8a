"""Which requests the demo answers: the Host must name the address being served, an Origin must be its own page.

This stops other web sites from posting work to the demo (cross-site requests) and from reaching it under a
name of theirs that resolves to this computer (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def refusal(environ: Mapping[str, Any], allowed_hosts: Collection[str] = ()) -> str | None:
    """Why the request (a WSGI environ) must be refused, in one line, or None when it may be answered.

    Accepted: a Host naming the address and port the request arrived on (localhost, 127.0.0.1 and [::1] alike
    when that address is a loopback one; the computer's own name, or one of allowed_hosts, otherwise), and no
    Origin or the origin of the page that Host names.
    """
    scheme = str(environ.get("wsgi.url_scheme", "http"))
    address, port = _local_address(environ)
    served = f"{_bracket(address)}:{port}"
    host = str(environ.get("HTTP_HOST", ""))
    try:
        name, host_port = split_host(host, DEFAULT_PORTS.get(scheme, 80))
    except ValueError:
        return f"the Host header {host!r} is not a host name; this demo serves {served}"
    if host_port != port or name not in names_for(address, allowed_hosts):
        return f"the Host header {host!r} is not the address this demo serves ({served})"
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return None
    parts = urlsplit(str(origin))
    try:
        same = parts.scheme == scheme and split_host(parts.netloc, DEFAULT_PORTS.get(scheme, 80)) == (name, port)
    except ValueError:
        same = False
    if not same:
        return f"requests from other web pages are refused (Origin {origin!r}, this page is {scheme}://{host})"
    return None


def split_host(host: str, default_port: int) -> tuple[str, int]:
    """(name, port) from a Host header value: "name", "name:port" or "[v6]:port"; names as _plain gives them."""
    host = host.strip()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"not a host: {host!r}")
    elif host.count(":") > 1:
        raise ValueError(f"not a host: {host!r} (an IPv6 address needs brackets)")
    else:
        name, _, port = host.partition(":")
    name = _plain(name.rstrip("."))
    if not name or any(c in name for c in "/\\@?#[] ") or (port and not port.isdigit()):
        raise ValueError(f"not a host: {host!r}")
    return name, int(port) if port else default_port


def names_for(address: str, allowed_hosts: Collection[str] = ()) -> set[str]:
    """The host names a request that arrived on the local address may carry in its Host header."""
    names = {_plain(address), *(h.lower() for h in allowed_hosts)}
    if is_loopback(address):
        return names | LOOPBACK_NAMES
    machine = socket.gethostname().lower()
    return names | {machine, f"{machine}.local"}


def is_loopback(address: str) -> bool:
    """Whether address (a name or an IP) is this computer's loopback interface."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(_plain(address)).is_loopback
    except ValueError:
        return False


def _local_address(environ: Mapping[str, Any]) -> tuple[str, int]:
    """The (IP, port) the request arrived on; the server's name and port when the socket is not known."""
    sock = environ.get("werkzeug.socket")
    if isinstance(sock, socket.socket):
        try:
            address, port = sock.getsockname()[:2]
            return _plain(str(address)), int(port)
        except (OSError, ValueError, TypeError):
            pass
    return _plain(str(environ.get("SERVER_NAME", ""))), int(environ.get("SERVER_PORT") or 80)


def _plain(address: str) -> str:
    """address in lower case without brackets; an IPv4 address mapped into IPv6 as plain IPv4."""
    address = address.lower().strip("[]")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address
