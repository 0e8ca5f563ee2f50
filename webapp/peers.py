"""Which user of this machine is on the other side: of a local TCP connection, or of a file lock.

Browsers send `localhost` cookies to every port, so a server run by another user of this machine
can receive the portal's session cookie and replay it. The portal refuses a connection whose peer
socket belongs to another uid; this module finds that uid, in this network namespace:

- First by asking the kernel for that one socket (netlink sock_diag, what `ss` uses): about 15 us.
  The peer's socket is the one whose local end is the peer's address:port and whose remote end is
  ours; the answer carries its uid. (An IPv4 lookup also finds an IPv6 socket connected to the
  IPv4-mapped address.)
- Where netlink is not allowed, from /proc/net/tcp and tcp6: each row is one socket, its local and
  remote address and port, state, uid and inode. Addresses are hex: IPv4 as one 32-bit word, IPv6
  as four, each word in the machine's byte order (little-endian here); ports are 4 hex digits. An
  IPv4 connection made from an IPv6 socket appears in tcp6 with IPv4-mapped addresses. Each read
  walks the kernel's whole connection table: a few milliseconds here, hence netlink first.

Sockets with inode 0 are not trusted: no process holds them any more (TIME_WAIT, orphans), and the
kernel reports them with uid 0.

`lock_holder` names who holds a lock file that codex-portal waited for in vain (/proc/locks gives
the process holding a lock on an inode; /proc/PID/status its uid; else the lock file's owner).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import socket
import struct
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[IPAddress, int]

TCP4 = "/proc/net/tcp"
TCP6 = "/proc/net/tcp6"
LITTLE_ENDIAN = sys.byteorder == "little"


@dataclass(frozen=True)
class Row:
    local: Endpoint
    remote: Endpoint
    state: int
    uid: int
    inode: int


def available() -> bool:
    """Whether this system shows socket owners the way `peer_uid` reads them."""
    if not sys.platform.startswith("linux"):
        return False
    return _diag.usable() or os.access(TCP4, os.R_OK)


def _words(packed: bytes) -> bytes:
    """An address's bytes in the kernel's order: each 32-bit word in host byte order."""
    if not LITTLE_ENDIAN:
        return packed
    return b"".join(packed[i : i + 4][::-1] for i in range(0, len(packed), 4))


def encode_address(address: IPAddress) -> str:
    """The hex spelling of `address` in /proc/net/tcp (IPv4) or tcp6 (IPv6)."""
    return _words(address.packed).hex().upper()


def decode_address(text: str) -> IPAddress:
    """`0100007F` -> 127.0.0.1; 32 hex digits -> an IPv6 address (IPv4-mapped ones stay IPv6)."""
    raw = _words(bytes.fromhex(text))
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    if len(raw) == 16:
        return ipaddress.IPv6Address(raw)
    raise ValueError(f"not an address: {text!r}")


def _endpoint(text: str) -> Endpoint:
    address, _, port = text.partition(":")
    return decode_address(address), int(port, 16)


def parse_line(line: str) -> Row | None:
    """One row of /proc/net/tcp or tcp6; None for the header or a line that is not a row."""
    fields = line.split()
    # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
    if len(fields) < 10 or not fields[0].endswith(":") or not fields[0][:-1].isdigit():
        return None
    try:
        return Row(
            local=_endpoint(fields[1]),
            remote=_endpoint(fields[2]),
            state=int(fields[3], 16),
            uid=int(fields[7]),
            inode=int(fields[9]),
        )
    except ValueError:
        return None


def parse_table(text: str) -> list[Row]:
    """Every row of a /proc/net/tcp or tcp6 text."""
    return [row for row in map(parse_line, text.splitlines()) if row is not None]


def normalise(address: str | IPAddress) -> IPAddress:
    """An address as Python spells it (`::ffff:127.0.0.1` becomes 127.0.0.1, a `%scope` is dropped)."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _mapped(address: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)


def _needles(ours: Endpoint, peer: Endpoint, *, six: bool) -> str | None:
    """The text that starts the peer socket's row (after its slot number) in tcp or tcp6."""
    (our_ip, our_port), (peer_ip, peer_port) = ours, peer
    if our_ip.version != peer_ip.version:
        return None
    if six:
        our_ip, peer_ip = _mapped(our_ip), _mapped(peer_ip)
    elif our_ip.version == 6:
        return None  # an IPv6 connection appears in tcp6 only
    return f" {encode_address(peer_ip)}:{peer_port:04X} {encode_address(our_ip)}:{our_port:04X} "


def uid_in_table(text: str, ours: Endpoint, peer: Endpoint, *, six: bool) -> int | None:
    """The uid of the peer's socket in one table's text (tcp6 when `six`), None when it is not there.

    `ours` and `peer` are normalised (IPv4-mapped addresses as IPv4). A plain text search, not a
    parse of every row: this runs once per connection.
    """
    needle = _needles(ours, peer, six=six)
    if needle is None:
        return None
    start = text.find(needle)
    while start >= 0:
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", start)
        row = parse_line(text[line_start : line_end if line_end >= 0 else len(text)])
        if row is not None and row.inode != 0:
            return row.uid
        start = text.find(needle, start + 1)
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError:
        return ""


def _endpoints(local: Sequence[object], remote: Sequence[object]) -> tuple[Endpoint, Endpoint] | None:
    try:
        ours = (normalise(str(local[0])), int(str(local[1])))
        peer = (normalise(str(remote[0])), int(str(remote[1])))
    except (ValueError, IndexError):
        return None
    return (ours, peer) if ours[0].version == peer[0].version else None


def peer_uid(local: Sequence[object], remote: Sequence[object]) -> int | None:
    """The uid owning the socket at the other end of the connection from `local` (our socket's
    address and port, as `getsockname()` gives them) to `remote` (the peer's, as `getpeername()`);
    None when no live socket in this network namespace is that peer."""
    endpoints = _endpoints(local, remote)
    if endpoints is None:
        return None
    try:
        return _diag.uid(*endpoints)
    except OSError:  # netlink refused here (a sandbox): the tables
        return table_peer_uid(local, remote)


def table_peer_uid(
    local: Sequence[object], remote: Sequence[object], tables: tuple[str, str] = (TCP4, TCP6)
) -> int | None:
    """`peer_uid` from the /proc tables (or the two files named)."""
    endpoints = _endpoints(local, remote)
    if endpoints is None:
        return None
    ours, peer = endpoints
    for path, six in zip(tables, (False, True), strict=True):
        if not six and ours[0].version == 6:
            continue
        uid = uid_in_table(_read(path), ours, peer, six=six)
        if uid is not None:
            return uid
    return None


# ---- netlink sock_diag (linux/inet_diag.h) ----
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NO_COOKIE = 0xFFFFFFFF
TCP_LISTEN = 10
HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
REQUEST = struct.Struct("=BBBBI2s2s16s16sIII")  # inet_diag_req_v2 with its inet_diag_sockid
REPLY = struct.Struct("=BBBB2s2s16s16sIIIIIIII")  # inet_diag_msg


class _Diag:
    """One netlink socket for the process (no descriptor needed per connection, so the check still
    works when descriptors run short), used under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._pid = 0
        self._sequence = 0

    def usable(self) -> bool:
        with self._lock:
            try:
                self._open()
            except OSError:
                return False
            return True

    def _open(self) -> socket.socket:
        if self._socket is None or self._pid != os.getpid():  # (a forked child gets its own)
            self._socket = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
            )
            self._socket.settimeout(1.0)
            if not self._pid:
                atexit.register(self._close)
            self._pid = os.getpid()
        return self._socket

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def uid(self, ours: Endpoint, peer: Endpoint) -> int | None:
        """The uid of the live socket whose local end is `peer` and remote end `ours`; None when
        there is none. OSError when netlink cannot answer."""
        family = socket.AF_INET if ours[0].version == 4 else socket.AF_INET6
        request = REQUEST.pack(
            family,
            socket.IPPROTO_TCP,
            0,
            0,
            0xFFFFFFFF,  # any state
            peer[1].to_bytes(2, "big"),
            ours[1].to_bytes(2, "big"),
            peer[0].packed,
            ours[0].packed,
            0,
            NO_COOKIE,
            NO_COOKIE,
        )
        with self._lock:
            try:
                return self._ask(request, (peer, ours))
            except OSError:
                self._close()
                raise

    def _ask(self, request: bytes, expected: tuple[Endpoint, Endpoint]) -> int | None:
        sock = self._open()
        self._sequence = sequence = (self._sequence + 1) & 0xFFFFFFFF
        header = HEADER.pack(HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, sequence, 0)
        sock.send(header + request)
        for _ in range(8):  # skip a late answer to an earlier question
            data = sock.recv(8192)
            if len(data) < HEADER.size:
                raise OSError("short netlink answer")
            _, kind, _, seen, _ = HEADER.unpack_from(data)
            if seen != sequence:
                continue
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", data, HEADER.size)
                if -error in (2, 3):  # ENOENT, ESRCH: no such socket
                    return None
                raise OSError(-error, os.strerror(-error))
            if kind != SOCK_DIAG_BY_FAMILY or len(data) < HEADER.size + REPLY.size:
                raise OSError("unexpected netlink answer")
            family, state, _, _, sport, dport, src, dst, *_, uid, inode = REPLY.unpack_from(data, HEADER.size)
            size = 4 if family == socket.AF_INET else 16
            found = (normalise(ipaddress.ip_address(src[:size])), int.from_bytes(sport, "big"))
            to = (normalise(ipaddress.ip_address(dst[:size])), int.from_bytes(dport, "big"))
            # The kernel falls back to a listening socket at the peer's address and port: not the peer.
            if state == TCP_LISTEN or found != expected[0] or to != expected[1]:
                return None
            return int(uid) if inode else None  # inode 0: a socket no process holds
        raise OSError("no netlink answer")


_diag = _Diag()


def rows(tables: tuple[str, str] = (TCP4, TCP6)) -> Iterator[Row]:
    """Every socket row of both tables (for tests and diagnostics)."""
    for path in tables:
        yield from parse_table(_read(path))


# ---- who holds a lock file ---------------------------------------------------------------------
def lock_holder(lock_path: str | os.PathLike[str]) -> str:
    """For an error message: ' (process 123 of uid 65534, another user of this machine)', or
    ' (process 123)' when it is ours, or the lock file's owner when no holder is found; else ''."""
    try:
        st = os.stat(lock_path)
    except OSError:
        return ""
    me = os.geteuid()
    holder = flock_holder(st)
    if holder is not None:
        pid, uid = holder
        if uid is None or uid == me:
            return f" (process {pid})"
        return f" (process {pid} of uid {uid}, another user of this machine)"
    if st.st_uid != me:
        return f" (the lock file belongs to uid {st.st_uid}, another user of this machine)"
    return ""


def flock_holder(st: os.stat_result, locks: str = "/proc/locks") -> tuple[int, int | None] | None:
    """The process holding a lock on the file `st` describes, and its real uid (None if unknown)."""
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in _read(locks).splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF"; "1: -> FLOCK ..." is a waiter
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[5] != inode or not fields[4].isdigit():
            continue
        pid = int(fields[4])
        if pid > 0:
            return pid, process_uid(pid)
    return None


def process_uid(pid: int) -> int | None:
    """The real uid of a process (the user who started it), from /proc/PID/status."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None
