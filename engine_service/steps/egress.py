"""Where the HTTP step runners may connect: the egress policy (docs/decisions/0024).

A definition's manager chooses (or templates) the URLs its ``http`` and ``field_update`` steps
call, and the engine makes the call from inside the deployment's network. So by default an
address that is not public is refused: loopback, link-local (the cloud metadata address
169.254.169.254 among them), private (RFC 1918, ULA fc00::/7, CGNAT 100.64.0.0/10), 0.0.0.0/8,
unspecified, multicast, reserved and broadcast addresses, also when written as IPv4-mapped,
6to4 or NAT64 IPv6 forms. ``ENGINE_EGRESS_ALLOW`` opens what a deployment needs: CIDRs and host
names, each with an optional port (``127.0.0.1/32,10.1.0.0/16,api.internal:8443``). The ports of
flowledger's own services (the store, its metrics, the engine's listeners) stay refused on
non-public addresses unless an entry names that port.

The guarantee is the check at send time, on the address the connection uses
(:class:`EgressBackend`): the runner resolves the name itself, checks every address it
resolved to, and connects to a checked one, so a name that resolves to loopback, a DNS answer
that changes between two lookups (rebinding) and every redirect hop are covered. The check of
a literal URL at definition time (:func:`literal_violation`) is a courtesy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpcore

ERROR_TYPE = "EgressDenied"
VARIABLE = "ENGINE_EGRESS_ALLOW"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What ipaddress's flags do not all say (is_private leaves out CGNAT; listed for clarity).
_DENIED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
        "240.0.0.0/4", "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# The services' default ports: store gRPC and metrics, engine gRPC and metrics.
DEFAULT_OWN_PORTS = frozenset({50051, 9464, 50052, 9465})
_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+")


class EgressDenied(Exception):
    """A connection the policy refuses; the message names the host, address and port."""


@dataclass(frozen=True)
class AllowEntry:
    """One entry of the allow-list: a network or a host name, and an optional port."""

    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    def matches(self, host: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return _normal_host(host) == self.host
        assert self.network is not None
        return address.version == self.network.version and address in self.network

    def __str__(self) -> str:
        where = self.host if self.host is not None else str(self.network)
        if self.port is None:
            return where
        return f"[{where}]:{self.port}" if ":" in where else f"{where}:{self.port}"


@dataclass(frozen=True)
class EgressPolicy:
    """Default: every non-public address refused. ``allow`` opens; ``own_ports`` stay refused on
    non-public addresses unless an allow entry names the port."""

    allow: tuple[AllowEntry, ...] = ()
    own_ports: frozenset[int] = field(default=DEFAULT_OWN_PORTS)

    @classmethod
    def parse(cls, text: str, own_ports: Iterable[int] = DEFAULT_OWN_PORTS) -> EgressPolicy:
        """From ``ENGINE_EGRESS_ALLOW``'s syntax. ValueError naming the bad entry."""
        entries = tuple(parse_entry(part.strip()) for part in text.split(",") if part.strip())
        return cls(entries, frozenset(own_ports))

    def with_own_ports(self, ports: Iterable[int]) -> EgressPolicy:
        return EgressPolicy(self.allow, self.own_ports | frozenset(ports))

    def refusal(self, host: str, address: IPAddress, port: int) -> str | None:
        """Why connecting to ``address``:``port`` (resolved from ``host``) is refused, or None."""
        entry = next((e for e in self.allow if e.matches(host, address, port)), None)
        public = not _denied_range(address)
        if port in self.own_ports and not public and (entry is None or entry.port != port):
            return f"port {port} is one of flowledger's own services'"
        if entry is not None or public:
            return None
        return f"{address} is not a public address"

    def check(self, host: str, address: IPAddress, port: int) -> None:
        reason = self.refusal(host, address, port)
        if reason is not None:
            raise EgressDenied(
                f"connecting to {host}:{port} ({address}) is refused: {reason}; "
                f"{VARIABLE} opens it"
            )

    def describe(self) -> str:
        if not self.allow:
            return "public addresses only"
        return "public addresses and " + ", ".join(str(e) for e in self.allow)


DEFAULT_POLICY = EgressPolicy()


def parse_entry(text: str) -> AllowEntry:
    """``CIDR``, ``IP``, ``host``, each with ``:port`` (IPv6 in brackets when with a port)."""
    where, port = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: unclosed '['")
        where, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':port' after ']'")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        where, _, raw = text.partition(":")
        port = _port(text, raw)
    if not where:
        raise ValueError(f"{text!r}: empty host")
    try:
        return AllowEntry(network=ipaddress.ip_network(where, strict=False), port=port)
    except ValueError:
        pass
    if "/" in where or ":" in where or not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", where):
        raise ValueError(f"{text!r}: neither a CIDR, an IP address nor a host name")
    return AllowEntry(host=_normal_host(where), port=port)


def _port(text: str, raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1..65535")
    return int(raw)


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _denied_range(address: IPAddress) -> bool:
    """Whether the default policy refuses ``address`` (not a public unicast address)."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return _denied_range(embedded)
    return (
        any(address.version == n.version and address in n for n in _DENIED_NETWORKS)
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
            "255.255.255.255"))
    )  # fmt: skip


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally, in any form a resolver accepts (dotted,
    decimal ``2130706433``, hex, octal, short forms, bracketed IPv6), else None (a name)."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(bare) and any(c.isdigit() for c in bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def literal_violation(url_host: str, port: int, policy: EgressPolicy) -> str | None:
    """Why a literal URL's host is refused already by its text, or None (a name, or allowed)."""
    address = literal_address(url_host)
    if address is None:
        return None
    return policy.refusal(url_host, address, port)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (a literal is itself)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


class EgressBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves the name itself, refuses the connection
    unless the policy admits every address it resolved to, and connects to those addresses
    (TLS still verifies, and SNI and Host still carry, the name: httpcore passes the origin's
    host to ``start_tls``, not the address connected to)."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port)
        for address in addresses:
            self.policy.check(host, address, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )  # fmt: skip
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressDenied(f"unix socket {path!r} is refused: the runners connect over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
