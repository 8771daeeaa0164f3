"""The MLLP listener: ORU^R01 reports from the RIS, each kept on disk, recorded, then acknowledged.

Written against python-hl7 0.4.5's asyncio MLLP streams (``hl7.mllp``). One seam goes below them:
:func:`_pending_bytes` reads the stdlib StreamReader's buffer (as python-hl7's own ``readblock`` does) to
tell a connection that is idle between messages from one that stopped inside a message.

Per message: the block's bytes are written and fsynced to ``<data_dir>/hl7/YYYYMMDD/<time>-<random>.hl7``
before anything else (a crash after the ACK loses nothing), parsed (node.hl7.message, which teaches the
log scrubber the patient identifiers first), recorded (node.labels.radiology_reports) in a worker thread, and ACKed.
Bad framing (a block not opening with 0x0B, over ``max_message_bytes``, a message left incomplete for
``timeout_s`` or cut by the peer's close) gets no ACK: one log line, one audit row (REPORT_REFUSED,
``stage: mllp``), and the connection is closed. A connection silent for ``idle_timeout_s`` is closed quietly.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, start_hl7_server
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from node.config import Hl7Config
from node.db import audit
from node.events import AuditKind, ReportSource
from node.hl7.message import AckCode, OruReport, Rejected, ack, parse
from node.labels.radiology_reports import IncomingReport, record_report
from node.logging import get_logger
from node.storage.durable import fsync_dir, make_dirs_durable

log = get_logger(__name__)


def _pending_bytes(reader: HL7StreamReader) -> int:
    """Bytes received and not yet read as a block (asyncio.StreamReader's buffer)."""
    return len(reader._buffer)  # the seam named in the module docstring


class Hl7Listener:
    """The MLLP server on ``config.host:config.port``, run by an event loop in its own thread."""

    def __init__(self, config: Hl7Config, data_dir: Path, engine: Engine) -> None:
        self.config, self.engine = config, engine
        self.folder = data_dir / "hl7"
        self.port = config.port  # the bound port once started (config.port 0 picks one)
        self._known_dirs: set[Path] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task[None], bool] = {}  # each connection's task -> recording a message now
        self._closing = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="hl7", daemon=True)

    def start(self) -> Hl7Listener:
        """Bind and start serving; raises OSError when the port cannot be bound."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(start_hl7_server(
            self._serve, self.config.host, self.config.port, limit=self.config.max_message_bytes), self._loop)
        try:
            self._server = future.result(timeout=30)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            raise
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("hl7 listening", host=self.config.host, port=self.port)
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections and the loop; a message being recorded is ACKed first."""
        if self._server is not None:
            server = self._server

            async def close() -> None:
                self._closing = True
                server.close()
                for task, busy in list(self._connections.items()):
                    if not busy:
                        task.cancel()
                await asyncio.gather(*self._connections, return_exceptions=True)
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=self.config.timeout_s + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # --- one connection -----------------------------------------------------------------------------------

    async def _serve(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        idle_since = time.monotonic()
        try:
            while not self._closing:
                try:
                    block = await asyncio.wait_for(reader.readblock(), self.config.timeout_s)
                except asyncio.TimeoutError:
                    if _pending_bytes(reader):
                        await self._framing(peer, f"message incomplete after {self.config.timeout_s:g} s",
                                            _pending_bytes(reader))
                        return
                    if time.monotonic() - idle_since >= self.config.idle_timeout_s:
                        log.info("hl7 connection idle, closed", peer=peer)
                        return
                    continue
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        await self._framing(peer, "connection closed inside a message (no 0x1C 0x0D end)",
                                            len(exc.partial))
                    return
                except InvalidBlockError:
                    await self._framing(peer, "block does not begin with 0x0B", None)
                    return
                except ValueError:  # python-hl7's readblock: the block passed the stream limit
                    await self._framing(peer, f"message over {self.config.max_message_bytes} bytes", None)
                    return
                self._connections[task] = True
                response = await asyncio.to_thread(self.handle, block, peer)
                writer.writeblock(response)
                await writer.drain()
                self._connections[task] = False
                idle_since = time.monotonic()
        except (ConnectionError, OSError) as exc:
            log.info("hl7 connection lost", peer=peer, error=type(exc).__name__)
        finally:
            del self._connections[task]
            writer.close()

    async def _framing(self, peer: str, reason: str, size: int | None) -> None:
        log.warning("hl7 connection closed: bad framing", peer=peer, reason=reason)
        await asyncio.to_thread(self._audit_refusal, reason, None, None,
                                {"stage": "mllp", "peer": peer, **({"bytes": size} if size is not None else {})})

    def _audit_refusal(self, reason: str, control_id: str | None, path: str | None, extra: dict[str, object]) -> None:
        try:
            with self.engine.begin() as conn:
                audit.record(conn, AuditKind.REPORT_REFUSED, path=path,
                             detail={"source": str(ReportSource.HL7), "reason": reason, "control_id": control_id,
                                     **extra})
        except SQLAlchemyError as exc:
            log.error("hl7 refusal not audited: database error", reason=reason, error=type(exc).__name__)

    # --- one message --------------------------------------------------------------------------------------

    def keep(self, block: bytes) -> Path:
        """Write ``block`` durably under hl7/YYYYMMDD/; returns its path."""
        now = datetime.now(timezone.utc)
        folder = self.folder / now.strftime("%Y%m%d")
        make_dirs_durable(folder, self._known_dirs)
        path = folder / f"{now.strftime('%H%M%S.%f')}-{uuid.uuid4().hex[:12]}.hl7"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(folder)
        return path

    def handle(self, block: bytes, peer: str = "") -> bytes:
        """The ACK for one MLLP block (its bytes kept first). Never raises for what the block holds."""
        try:
            path = self.keep(block)
        except OSError as exc:
            log.error("hl7 message not kept: disk error", peer=peer, error=type(exc).__name__)
            try:
                parsed = parse(block)
                message, charset = parsed.message, parsed.charset
            except Rejected as rejected:
                message, charset = rejected.message, rejected.charset
            return ack(AckCode.ERROR, "the message could not be stored (disk error); send it again", message, charset)
        try:
            report = parse(block)
        except Rejected as rejected:
            control = _control_id(rejected)
            log.warning("hl7 message refused", peer=peer, ack=str(rejected.code), reason=rejected.reason,
                        control_id=control)
            self._audit_refusal(rejected.reason, control, str(path), {"stage": "message", "ack": str(rejected.code)})
            return ack(rejected.code, rejected.reason, rejected.message, rejected.charset)
        return self._record(report, path, peer)

    def _record(self, report: OruReport, path: Path, peer: str) -> bytes:
        incoming = IncomingReport(
            text=report.text, source=ReportSource.HL7, study_instance_uids=report.study_instance_uids,
            accession_numbers=report.accession_numbers, control_id=report.control_id,
            result_status=report.result_status, path=str(path), identifiers=report.identifiers)
        try:
            recorded = record_report(self.engine, incoming)
        except SQLAlchemyError as exc:
            log.error("hl7 report not recorded: database error", peer=peer, control_id=report.control_id,
                      error=type(exc).__name__)
            return ack(AckCode.ERROR, "the report could not be recorded (database error); send it again",
                       report.message, report.charset)
        if recorded.refused is not None:
            log.warning("hl7 report matched no study", peer=peer, ack="AE", control_id=report.control_id,
                        reason=recorded.refused, report_id=recorded.report_id)
            return ack(AckCode.ERROR, recorded.refused, report.message, report.charset)
        log.info("hl7 report recorded", peer=peer, ack="AA", control_id=report.control_id,
                 report_id=recorded.report_id, study_instance_uid=recorded.study_instance_uid,
                 result_status=report.result_status, current=recorded.current,
                 labels=[f"{ft}:{value}" for ft, value in sorted(recorded.labels.items())])
        return ack(AckCode.ACCEPT, None, report.message, report.charset)


def _control_id(rejected: Rejected) -> str | None:
    if rejected.message is None:
        return None
    msh = rejected.message.segment("MSH")
    return (str(msh(10)).strip() or None) if len(msh) > 10 else None
