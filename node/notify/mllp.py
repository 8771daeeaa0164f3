"""An MLLP client for one message: connect (TCP or TLS), send the framed message, read the framed reply."""

from __future__ import annotations

import socket
import ssl
import time

START, END = b"\x0b", b"\x1c\x0d"
MAX_REPLY_BYTES = 1024 * 1024


class MllpError(Exception):
    """The exchange failed: no connection, the peer closed or sent no frame in time; the message says which."""


def exchange(host: str, port: int, message: bytes, timeout_s: float, tls: ssl.SSLContext | None = None) -> bytes:
    """Send ``message`` framed (VT ... FS CR) and return the content of the first frame the peer sends back.

    The whole exchange (connect, send, reply) must finish within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise MllpError(f"cannot connect to {host}:{port}: {type(exc).__name__}: {exc}") from exc
    try:
        sock: socket.socket = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
        sock.sendall(START + message + END)
        return _read_frame(sock, deadline)
    except ssl.SSLError as exc:
        raise MllpError(f"TLS failed with {host}:{port}: {exc}") from exc
    except TimeoutError as exc:
        raise MllpError(f"no acknowledgement from {host}:{port} within {timeout_s:g} s") from exc
    except OSError as exc:
        raise MllpError(f"connection to {host}:{port} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        raw.close()


def _read_frame(sock: socket.socket, deadline: float) -> bytes:
    buffer = b""
    while True:
        start = buffer.find(START)
        end = buffer.find(END, start + 1) if start >= 0 else -1
        if end >= 0:
            return buffer[start + 1:end]
        if len(buffer) > MAX_REPLY_BYTES:
            raise MllpError(f"reply of more than {MAX_REPLY_BYTES} bytes without an MLLP frame end")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            what = "an unframed reply" if buffer else "no reply"
            raise MllpError(f"the peer closed the connection after {what} ({len(buffer)} bytes)")
        buffer += chunk
