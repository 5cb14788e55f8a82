"""A fault-injecting TCP proxy between a client (the worker) and Redis.

It runs its own event loop in a daemon thread, so it serves in-process workers
and worker subprocesses alike.  Faults are applied to *replies* (server to
client data), which is what makes a request's outcome unknown to its sender:

- ``delay_next_reply(pattern, seconds)``: the reply to the next request that
  contains ``pattern`` (e.g. ``b"EVALSHA"``) is held for ``seconds`` (one shot);
- ``drop_next_reply(pattern)``: that reply is discarded and the connection cut,
  after Redis has executed the request (one shot);
- ``cut_connections()``: close every proxied connection now;
- ``blackhole(True)``: accept connections but forward nothing either way;
- ``chaos(...)``: random delays, drops and cuts on every reply, seeded.

Every fault applied is counted in :attr:`stats`.  Requests themselves always
reach Redis unchanged, in order, on the connection they were sent on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class _OneShot:
    pattern: bytes
    action: str  # "delay" | "drop"
    seconds: float = 0.0


@dataclass
class _Chaos:
    rng: random.Random
    p_delay: float
    p_drop: float
    p_cut: float
    delay: tuple[float, float]


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    pending: list[_OneShot] = field(default_factory=list)  # faults armed for this connection's next reply


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listen_port = listen_port
        self.port = 0
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._one_shots: list[_OneShot] = []
        self._chaos: _Chaos | None = None
        self._blackhole = False
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start within 10 s")
        return self

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- faults
    def delay_next_reply(self, pattern: bytes, seconds: float) -> None:
        with self._lock:
            self._one_shots.append(_OneShot(pattern, "delay", seconds))

    def drop_next_reply(self, pattern: bytes) -> None:
        with self._lock:
            self._one_shots.append(_OneShot(pattern, "drop"))

    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._conns)

    def armed(self) -> int:
        """One-shot faults not yet triggered by a matching request."""
        with self._lock:
            return len(self._one_shots)

    def chaos(
        self,
        *,
        seed: int,
        p_delay: float = 0.0,
        p_drop: float = 0.0,
        p_cut: float = 0.0,
        delay: tuple[float, float] = (0.5, 2.0),
    ) -> None:
        with self._lock:
            self._chaos = _Chaos(random.Random(seed), p_delay, p_drop, p_cut, delay)

    def calm(self) -> None:
        """Stop random faults and forget armed one-shots (connections stay up)."""
        with self._lock:
            self._chaos = None
            self._one_shots.clear()

    def blackhole(self, on: bool) -> None:
        self._blackhole = on

    def cut_connections(self) -> None:
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._cut_all(), loop).result(10)

    # ------------------------------------------------------------ internals
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self._listen_port, reuse_address=True)
        )
        sock: socket.socket = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut_all()

    async def _cut_all(self) -> None:
        for conn in list(self._conns):
            self._close(conn)
            self.stats["cut"] += 1

    def _close(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        for w in (conn.client, conn.server):
            with contextlib.suppress(Exception):
                w.transport.abort()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.transport.abort()
            return
        conn = _Conn(cwriter, swriter)
        self._conns.add(conn)
        up = asyncio.create_task(self._upstream(conn, creader))
        down = asyncio.create_task(self._downstream(conn, sreader))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        self._close(conn)
        for t in (up, down):
            t.cancel()

    async def _upstream(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            while self._blackhole:
                await asyncio.sleep(0.05)
            with self._lock:
                for shot in list(self._one_shots):
                    if shot.pattern in data:
                        self._one_shots.remove(shot)
                        conn.pending.append(shot)
            conn.server.write(data)
            await conn.server.drain()

    async def _downstream(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            while self._blackhole:
                await asyncio.sleep(0.05)
            if conn.pending:
                shot = conn.pending.pop(0)
                if shot.action == "drop":
                    self.stats["dropped"] += 1
                    return  # cut: the request ran, its reply never arrives
                self.stats["delayed"] += 1
                await asyncio.sleep(shot.seconds)
            elif self._chaos is not None:
                with self._lock:
                    c = self._chaos
                    roll = c.rng.random() if c else 1.0
                    pause = c.rng.uniform(*c.delay) if c else 0.0
                if c is not None:
                    if roll < c.p_cut:
                        self.stats["cut"] += 1
                        return
                    if roll < c.p_cut + c.p_drop:
                        self.stats["dropped"] += 1
                        return
                    if roll < c.p_cut + c.p_drop + c.p_delay:
                        self.stats["delayed"] += 1
                        await asyncio.sleep(pause)
            conn.client.write(data)
            await conn.client.drain()


__all__ = ["FaultProxy"]
