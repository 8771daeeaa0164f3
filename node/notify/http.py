"""One HTTP(S) request for the FHIR and webhook channels (the standard library's http.client, no redirects
followed), and one-line reasons for what can go wrong with it."""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from node.config import ClientTLSConfig

MAX_REPLY_BYTES = 1024 * 1024
REASON_CHARS = 200
USER_AGENT = "ctnode"


class HttpError(Exception):
    """The exchange failed before a complete reply came: no connection, TLS, a timeout, a broken reply."""


@dataclass(frozen=True)
class Reply:
    """What the server answered."""

    status: int
    reason: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """``text`` on one line (runs of white space as one space), cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def tls_context(config: ClientTLSConfig) -> ssl.SSLContext:
    """The TLS client context for an https URL: the system's trust anchors or ``ca_file``, our certificate when
    one is configured (https is always TLS, whether or not ``tls.enabled`` is set)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file) if config.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = config.check_hostname
    if config.cert_file is not None and config.key_file is not None:
        context.load_cert_chain(str(config.cert_file), str(config.key_file))
    return context


def read_secret(path: Path, what: str) -> str:
    """The secret in the file at ``path`` (surrounding white space removed); HttpError naming ``what`` when the
    file cannot be read or is empty (the secret itself is never in a message)."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise HttpError(f"cannot read {what} {str(path)!r}: {type(exc).__name__}") from exc
    if not secret:
        raise HttpError(f"{what} {str(path)!r} is empty")
    return secret


def request(method: str, url: str, body: bytes, headers: dict[str, str], timeout_s: float,
            tls: ssl.SSLContext | None) -> Reply:
    """Send one request and read the whole reply (at most MAX_REPLY_BYTES). ``timeout_s`` bounds the connection
    and each wait for the server."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    where = f"{host}:{port}"
    connection: http.client.HTTPConnection
    if secure:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=tls or ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        try:
            connection.connect()
        except ssl.SSLError as exc:
            raise HttpError(f"TLS failed with {where}: {one_line(str(exc))}") from exc
        except TimeoutError as exc:
            raise HttpError(f"cannot connect to {where}: no connection within {timeout_s:g} s") from exc
        except OSError as exc:
            raise HttpError(f"cannot connect to {where}: {type(exc).__name__}: {one_line(str(exc))}") from exc
        try:
            connection.request(method, target, body=body,
                               headers={"User-Agent": USER_AGENT, "Content-Length": str(len(body)), **headers})
            response = connection.getresponse()
            data = response.read(MAX_REPLY_BYTES + 1)
        except TimeoutError as exc:
            raise HttpError(f"no answer from {where} within {timeout_s:g} s") from exc
        except ssl.SSLError as exc:
            raise HttpError(f"TLS failed with {where}: {one_line(str(exc))}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise HttpError(f"the exchange with {where} failed: {type(exc).__name__}: {one_line(str(exc))}") from exc
        if len(data) > MAX_REPLY_BYTES:
            raise HttpError(f"the reply from {where} is larger than {MAX_REPLY_BYTES} bytes")
        return Reply(response.status, response.reason, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()
