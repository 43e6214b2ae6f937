"""Loaded by every Python process the test run starts (PYTHONPATH): refuse non-loopback sockets.

Each refused attempt is appended to $COURSEKIT_NETGUARD_LOG, and the test session fails if that
file is not empty at the end, even when the code under test caught the error.
"""
import ipaddress
import os
import socket

_LOG = os.environ.get("COURSEKIT_NETGUARD_LOG")


def _local(host) -> bool:
    if host in (None, "", "localhost") or str(host).endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str):
    with open(_LOG, "a") as f:
        f.write(f"pid {os.getpid()}: {what}\n")
    raise OSError(f"network access outside loopback is not allowed in the test run: {what}")


if _LOG:
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _refuse(f"connect {address}")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _refuse(f"connect {address}")
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _local(host if not isinstance(host, bytes) else host.decode()):
            _refuse(f"resolve {host!r}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
