"""Which hosts a stream from the control topic may connect to.

A ``HostPolicy`` is built from the worker's ``group.allow_hosts`` and ``group.deny_hosts``
settings. An entry is an IP address, a CIDR range (``10.0.0.0/8``, ``fd00::/8``), a host name
(``cam1.lan``) or a name suffix (``*.cams.lan``). The check looks at the name in the URL and at
every address the name resolves to (``socket.getaddrinfo``), each time a source connects or
reconnects; every address must pass:

1. an address or name matching ``deny_hosts`` is denied;
2. when ``allow_hosts`` is not empty, the name or the address must match one of its entries;
3. loopback, link-local, unspecified and cloud-metadata addresses (``BUILTIN_DENIED``) are
   denied unless an IP/CIDR entry of ``allow_hosts`` contains the address itself (a name
   entry is not enough: DNS could point an allowed name at loopback or the metadata service).

Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) are allowed by default: cameras live
there. Command-line sources of ``run`` are the operator's own and are not checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Ranges denied unless an allow_hosts IP/CIDR entry contains the address (label, network).
BUILTIN_DENIED: tuple[tuple[str, IPNetwork], ...] = tuple(
    (label, ipaddress.ip_network(net))
    for label, net in (
        ("loopback", "127.0.0.0/8"),
        ("loopback", "::1/128"),
        ("link-local", "169.254.0.0/16"),
        ("link-local", "fe80::/10"),
        ("unspecified", "0.0.0.0/8"),
        ("unspecified", "::/128"),
        ("cloud metadata", "fd00:ec2::254/128"),
    )
)

_NAME = re.compile(
    r"^(\*\.)?(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$"
)

Resolver = Callable[[str, int | None], list[str]]


def parse_entry(entry: str) -> IPNetwork | str:
    """An allow/deny entry as a network, or as a lower-case name pattern; ValueError otherwise."""
    text = entry.strip().lower()
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    if not _NAME.match(text):
        raise ValueError(
            f"{entry[:100]!r} is neither an IP address, a CIDR range (10.0.0.0/8) nor a host"
            " name (cam1.lan, *.cams.lan)"
        )
    return text.rstrip(".")


def _address(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return addr


def _name_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def system_resolve(host: str, port: int | None) -> list[str]:
    """Every address ``host`` resolves to (what FFmpeg may connect to)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class HostPolicy:
    """The allow/deny rules for control-topic URLs; ``check`` returns a reason or None."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow_setting: str = "group.allow_hosts"
    deny_setting: str = "group.deny_hosts"
    resolver: Resolver = field(default=system_resolve, compare=False, repr=False)

    def __post_init__(self) -> None:
        for entry in (*self.allow, *self.deny):
            parse_entry(entry)  # fails early, naming the entry

    def _match(self, entries: Iterable[str], host: str, addr: IPAddress | None) -> str | None:
        for entry in entries:
            rule = parse_entry(entry)
            if isinstance(rule, str):
                if _name_matches(rule, host):
                    return entry
            elif addr is not None and addr.version == rule.version and addr in rule:
                return entry
        return None

    def _allowed_by_address(self, addr: IPAddress) -> bool:
        for entry in self.allow:
            rule = parse_entry(entry)
            if not isinstance(rule, str) and addr.version == rule.version and addr in rule:
                return True
        return False

    def check_address(self, host: str, addr: IPAddress | None) -> str | None:
        """Why ``host`` (resolved to ``addr``, or None before resolving) is denied, or None."""
        host = host.strip("[]").lower().rstrip(".")
        shown = host if addr is None or str(addr) == host else f"{host} ({addr})"
        if (entry := self._match(self.deny, host, addr)) is not None:
            return (
                f"host {shown} is denied by {self.deny_setting} entry {entry!r}:"
                f" remove it from {self.deny_setting} to allow it"
            )
        if self.allow and addr is not None and self._match(self.allow, host, addr) is None:
            return f"host {shown} is not in {self.allow_setting}: add it to {self.allow_setting}"
        if addr is None:
            return None
        for label, net in BUILTIN_DENIED:
            if addr.version == net.version and addr in net and not self._allowed_by_address(addr):
                return (
                    f"host {shown} is a {label} address, denied by default: add {addr} (or its"
                    f" range) to {self.allow_setting} to allow it"
                )
        return None

    def check_static(self, host: str) -> str | None:
        """The check without DNS: names and literal addresses (when a record is accepted)."""
        return self.check_address(host, _address(host))

    def check(self, host: str, port: int | None = None) -> str | None:
        """The full check at connect time: ``host`` and every address it resolves to.
        Raises OSError when the name does not resolve."""
        literal = _address(host)
        addresses = [str(literal)] if literal is not None else self.resolver(host, port)
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        for text in addresses:
            reason = self.check_address(host, _address(text))
            if reason is not None:
                return reason
        return None
