"""Outbound URLs checked before fastsvd connects to them (webhooks, image URLs): no SSRF.

A URL passes when its scheme is allowed and *every* address its host resolves to is public:
not loopback, private, CGNAT, link-local (cloud metadata), multicast, reserved or unspecified,
in IPv4 or IPv6 (IPv4-mapped, 6to4 and NAT64 forms unwrapped). The caller then connects to one
of the checked addresses, never to a fresh resolution of the name, so DNS rebinding cannot swap
in an internal address between the check and the connection.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from fastsvd.errors import InvalidInput

Resolver = Callable[[str, int], list[str]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: str) -> bool:
    """Whether ``address`` is a globally routable unicast address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:  # 2002::/16 carries an IPv4 address a relay reaches
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class CheckedURL:
    """A URL whose host resolved to public addresses only."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: list[str]

    def pinned(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """(URL with the host replaced by a checked address, Host header, TLS SNI extension)."""
        parts = urllib.parse.urlsplit(self.url)
        address = self.addresses[0]
        literal = f"[{address}]" if ":" in address else address
        netloc = f"{literal}:{self.port}"
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        default_port = {"http": 80, "https": 443}[self.scheme]
        host_header = self.host if self.port == default_port else f"{self.host}:{self.port}"
        return url, {"host": host_header}, {"sni_hostname": self.host}


def check_url(
    url: str,
    field: str,
    *,
    schemes: tuple[str, ...] = ("https", "http"),
    allow_private: bool = False,
    resolver: Resolver = system_resolver,
) -> CheckedURL:
    """Resolve and check ``url``; ``InvalidInput`` naming ``field`` when it may not be used."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise InvalidInput(field, "not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise InvalidInput(field, f"URL scheme must be {' or '.join(schemes)}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidInput(field, "URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(field, "URLs with credentials are not accepted")
    port = port or (443 if scheme == "https" else 80)
    try:
        addresses = [host] if _is_literal(host) else resolver(host, port)
    except (OSError, UnicodeError):
        raise InvalidInput(field, f"host {host!r} does not resolve") from None
    if not addresses:
        raise InvalidInput(field, f"host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise InvalidInput(field, f"host {host!r} is not a public address")
    return CheckedURL(url.strip(), scheme, host, port, addresses)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
