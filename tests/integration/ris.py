"""A RIS for tests and benchmarks: python-hl7's asyncio MLLP server, ACKing each ORU as a RIS would (python-hl7's
own create_ack: MSA-2 echoes MSH-10), or failing on purpose (AE, a wrong control ID, garbage, a dropped
connection, silence) and being down (not listening) for a while."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import hl7
from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server

MODES = ("ack", "error", "wrong_id", "garbage", "drop", "silent")


@dataclass(frozen=True)
class Received:
    """An ORU the RIS read, when, and what it answered."""

    message: hl7.Message
    at: float  # time.time()
    answered: str  # the mode it was answered in

    @property
    def control_id(self) -> str:
        return str(self.message.segment("MSH")(10))


class Ris:
    """An MLLP server on 127.0.0.1:``port`` in its own thread; ``mode`` (see MODES) says how it answers."""

    def __init__(self, port: int, mode: str = "ack") -> None:
        self.port, self.mode = port, mode
        self.received: list[Received] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="ris", daemon=True)
        self._thread.start()

    def start(self) -> Ris:
        """Listen (again)."""
        async def listen() -> asyncio.base_events.Server:
            return await start_hl7_server(self._serve, "127.0.0.1", self.port, encoding="utf-8")
        self._server = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)
        return self

    def down(self) -> None:
        """Stop listening and drop every open connection (the RIS is down)."""
        server, self._server = self._server, None
        if server is not None:
            async def close() -> None:
                server.close()
                if hasattr(server, "close_clients"):
                    server.close_clients()
                await server.wait_closed()
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def stop(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def acknowledged(self) -> list[Received]:
        """The ORUs answered AA."""
        return [r for r in self.received if r.answered == "ack"]

    def wait_for(self, count: int, timeout_s: float = 120.0) -> list[Received]:
        """Wait until ``count`` ORUs were acknowledged; returns them."""
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.acknowledged())} of {count} ORUs acknowledged, "
                                   f"{len(self.received)} received")
            time.sleep(0.05)
        return self.acknowledged()

    async def _serve(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        try:
            while True:
                try:
                    message = await reader.readmessage()
                except asyncio.IncompleteReadError:
                    return
                mode = self.mode
                self.received.append(Received(message, time.time(), mode))
                if mode == "drop":
                    writer.transport.abort()
                    return
                if mode == "silent":
                    continue
                if mode == "garbage":
                    writer.writeblock(b"this is not HL7")
                elif mode == "wrong_id":
                    ack = message.create_ack("AA")
                    ack.segment("MSA").assign_field("SOMEONE-ELSE", 2)
                    writer.writemessage(ack)
                else:
                    writer.writemessage(message.create_ack("AE" if mode == "error" else "AA"))
                await writer.drain()
        finally:
            writer.close()
