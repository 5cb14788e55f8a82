"""Local SMTP and HTTP sinks that answer after a delay and count what they receive.

Each sink is a small, real server on loopback, meant to run in its own process
(``python -m tests.testsupport.sinks smtp|http --port P --delay-ms D``) so that its
CPU is not charged to the process under test.  Both are hand-written asyncio
protocols rather than full server frameworks, to keep the sink's own CPU cost
per message low: on a two-core machine the sink shares the cores with the
worker being measured.

* ``smtp``: enough ESMTP for aiosmtplib and smtplib (EHLO/HELO, MAIL, RCPT,
  DATA, RSET, NOOP, QUIT; advertises PIPELINING, 8BITMIME, SMTPUTF8, SIZE).
  The reply to the end of DATA is delayed by ``--delay-ms`` (the per-delivery
  latency); ``--delay-all`` delays every reply instead.
* ``http``: HTTP/1.1 with keep-alive and ``Content-Length`` bodies.  Every
  request other than the control paths is answered after ``--delay-ms`` with
  a JSON body that satisfies both a Twilio-style client (``201``, ``sid``) and
  a generic JSON provider (``id``, ``status``).

Counting: every accepted message / request is counted, and any token matching
``bjt-[A-Za-z0-9_-]+`` found in it is counted per token, so a harness can tell a
lost delivery from a duplicated one.  Counters are served as JSON at
``GET /count`` (``POST /reset`` clears them) on the HTTP sink's own port, and on
``--control-port`` for the SMTP sink.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from typing import Any, cast

from tests.testsupport.processes import terminate
from tests.testsupport.redis_server import free_port

TOKEN_RE = re.compile(rb"bjt-[A-Za-z0-9_-]+")


class Counts:
    """Per-process counters of accepted messages and of the tokens seen in them."""

    def __init__(self) -> None:
        self.total = 0
        self.tokens: Counter[bytes] = Counter()

    def record(self, payload: bytes) -> None:
        self.total += 1
        found = TOKEN_RE.search(payload)
        if found:
            self.tokens[found.group(0)] += 1

    def reset(self) -> None:
        self.total = 0
        self.tokens.clear()

    def as_json(self) -> bytes:
        dups = [(t.decode(), n) for t, n in self.tokens.items() if n > 1]
        return json.dumps(
            {
                "total": self.total,
                "distinct": len(self.tokens),
                "duplicated": len(dups),
                "duplicate_examples": dups[:10],
            }
        ).encode()


# --------------------------------------------------------------------------- HTTP


class HttpSinkProtocol(asyncio.Protocol):
    """HTTP/1.1 server: delayed JSON answers for deliveries, /count and /reset for control."""

    def __init__(self, counts: Counts, delay: float, control_only: bool = False) -> None:
        self.counts = counts
        self.delay = delay
        self.control_only = control_only
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[tuple[bytes, bytes, bytes, bool]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end]
            lines = head.split(b"\r\n")
            try:
                method, path, _version = lines[0].split(b" ", 2)
            except ValueError:
                self._raw_error(b"400 Bad Request")
                return
            length = 0
            keep_alive = True
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value.strip())
                elif lname == b"connection" and value.strip().lower() == b"close":
                    keep_alive = False
                elif lname == b"transfer-encoding":
                    self._raw_error(b"411 Length Required")
                    return
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            self.queue.put_nowait((method, path, body, keep_alive))

    def _raw_error(self, status: bytes) -> None:
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    async def _serve(self) -> None:
        while True:
            method, path, body, keep_alive = await self.queue.get()
            if path.startswith(b"/count"):
                status, payload = b"200 OK", self.counts.as_json()
            elif path.startswith(b"/reset") and method == b"POST":
                self.counts.reset()
                status, payload = b"200 OK", b'{"reset": true}'
            elif self.control_only:
                status, payload = b"404 Not Found", b'{"error": "control port: use /count or /reset"}'
            else:
                if self.delay:
                    await asyncio.sleep(self.delay)
                self.counts.record(body)
                self.seq += 1
                sid = f"SM{os.getpid():08x}{id(self):012x}{self.seq:012x}"[:34]
                payload = json.dumps(
                    {"sid": sid, "id": sid, "message_id": sid, "status": "queued", "error_code": None}
                ).encode()
                status = b"201 Created" if path.endswith(b"/Messages.json") else b"200 OK"
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(payload)).encode()
                + (b"\r\n\r\n" if keep_alive else b"\r\nConnection: close\r\n\r\n")
                + payload
            )
            if not keep_alive:
                self.transport.close()
                return


# --------------------------------------------------------------------------- SMTP


class SmtpSinkProtocol(asyncio.Protocol):
    """Minimal ESMTP server that accepts everything and delays the end-of-DATA reply."""

    def __init__(self, counts: Counts, delay: float, delay_all: bool) -> None:
        self.counts = counts
        self.delay = delay
        self.delay_all = delay_all
        self.buf = b""
        self.in_data = False
        self.transport: asyncio.Transport | None = None
        self.lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport.write(b"220 sink.localhost ESMTP bench sink\r\n")
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                message = self.buf[: end + 2]
                self.buf = self.buf[end + 5 :]
                self.in_data = False
                self.lines.put_nowait(b"\x00DATA" + message)
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                return
            line = self.buf[:nl]
            self.buf = self.buf[nl + 2 :]
            if line[:4].upper() == b"DATA":
                self.in_data = True
            self.lines.put_nowait(line)

    async def _reply(self, text: bytes, delayed: bool = False) -> None:
        if self.delay and (delayed or self.delay_all):
            await asyncio.sleep(self.delay)
        assert self.transport is not None
        self.transport.write(text)

    async def _serve(self) -> None:
        while True:
            line = await self.lines.get()
            if line is None:
                return
            if line.startswith(b"\x00DATA"):
                self.counts.record(line[5:])
                await self._reply(b"250 2.0.0 Ok: queued\r\n", delayed=True)
                continue
            verb = line[:4].upper()
            if verb == b"EHLO":
                await self._reply(
                    b"250-sink.localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                    b"250-SMTPUTF8\r\n250 SIZE 10485760\r\n"
                )
            elif verb == b"HELO":
                await self._reply(b"250 sink.localhost\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                await self._reply(b"250 2.1.0 Ok\r\n")
            elif verb == b"DATA":
                await self._reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                await self._reply(b"221 2.0.0 Bye\r\n")
                assert self.transport is not None
                self.transport.close()
                return
            else:
                await self._reply(b"502 5.5.2 Command not implemented\r\n")


# --------------------------------------------------------------------------- process entry


async def serve(kind: str, port: int, delay_ms: float, control_port: int | None, delay_all: bool) -> None:
    loop = asyncio.get_running_loop()
    counts = Counts()
    delay = delay_ms / 1000.0
    servers: list[asyncio.base_events.Server] = []
    if kind == "http":
        servers.append(await loop.create_server(lambda: HttpSinkProtocol(counts, delay), "127.0.0.1", port))
    elif kind == "smtp":
        servers.append(
            await loop.create_server(lambda: SmtpSinkProtocol(counts, delay, delay_all), "127.0.0.1", port)
        )
    else:
        raise SystemExit(f"unknown sink kind {kind!r}: use 'smtp' or 'http'")
    if control_port:
        servers.append(
            await loop.create_server(
                lambda: HttpSinkProtocol(counts, 0.0, control_only=True), "127.0.0.1", control_port
            )
        )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {kind} {port}", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.testsupport.sinks", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["smtp", "http"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-ms", type=float, default=0.0, help="reply delay per delivery (ms)")
    p.add_argument("--control-port", type=int, default=None, help="HTTP port for /count and /reset")
    p.add_argument("--delay-all", action="store_true", help="smtp: delay every reply, not only end of DATA")
    p.add_argument("--no-uvloop", action="store_true")
    a = p.parse_args(argv)
    coro = serve(a.kind, a.port, a.delay_ms, a.control_port, a.delay_all)
    if not a.no_uvloop:
        try:
            import uvloop

            uvloop.run(coro)
            return
        except ImportError:
            pass
    asyncio.run(coro)


# --------------------------------------------------------------------------- harness side


class SinkProcess:
    """A sink started as a child process, stopped by PID."""

    def __init__(self, kind: str, delay_ms: float = 0.0, port: int | None = None) -> None:
        self.kind = kind
        self.delay_ms = delay_ms
        self.port = port or free_port()
        self.control_port = self.port if kind == "http" else free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def start(self, timeout: float = 15.0) -> None:
        cmd = [sys.executable, "-m", "tests.testsupport.sinks", self.kind, "--port", str(self.port),
               "--delay-ms", str(self.delay_ms)]
        if self.kind == "smtp":
            cmd += ["--control-port", str(self.control_port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} sink exited with {self.proc.returncode} (port {self.port})")
            with contextlib.suppress(OSError):
                self.counts()
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} sink did not answer on port {self.control_port} within {timeout}s")

    def counts(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.control_url + "/count", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def reset(self) -> None:
        req = urllib.request.Request(self.control_url + "/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    def __enter__(self) -> SinkProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Counts", "SinkProcess", "main", "serve"]

if __name__ == "__main__":
    main()
