"""What operators probe: health endpoints and the loop watchdog (the host side of the engine's observer).

* The engine's :class:`~asyncjobs.worker.observer.Observer` writes each process's slot of a
  :class:`~asyncjobs.worker.observer.HealthBoard` (shared memory); this module reads it.
* :class:`Watchdog`: a daemon thread that sees a loop heartbeat go stale (reports the lag while
  the loop is blocked, logs where it is blocked).
* :class:`OpsServer`: stdlib ``http.server`` on a daemon thread, so a blocked event loop can
  still answer: ``/livez``, ``/readyz`` and ``/metrics``.  Bound to 127.0.0.1 unless told
  otherwise, with bounds any client meets: :data:`MAX_REQUEST_HEAD` bytes of request line and
  headers (more is answered 431), :data:`REQUEST_TIMEOUT` seconds for the whole request head, at most
  :data:`MAX_PENDING` connections waiting for theirs (more evict the oldest) and
  :data:`MAX_CONNECTIONS` requests answered at once.  A connection reaches a handler thread only
  once its request head is in, so idle connections cannot hold the threads a probe needs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import selectors
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler
from typing import Any

from asyncjobs import metrics
from asyncjobs.protocol import keys
from asyncjobs.worker.observer import LOOP_BEAT_INTERVAL, HealthBoard, Slot

__all__ = ["OpsServer", "Watchdog", "close_servers", "start_servers"]

log = logging.getLogger("asyncjobs.ops")

#: Request line and headers of one ops request, in bytes (a probe or a scrape needs well under 1 KiB).
MAX_REQUEST_HEAD = 16 * 1024
#: Seconds an ops connection may take to send its whole request head (and each write of the answer).
REQUEST_TIMEOUT = 5.0
#: Requests answered at once (their heads are in: each takes a moment); more are closed unanswered.
MAX_CONNECTIONS = 32
#: Connections still sending their request head; one more evicts the oldest, so idle connections
#: hold neither the worker's open files nor a probe's turn.
MAX_PENDING = 128


class _HeadLimit:
    """``rfile`` that yields at most ``budget`` bytes of request head (then end of file)."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self._left = budget
        self.exhausted = False

    def readline(self, limit: int = -1) -> bytes:
        if self._left <= 0:
            self.exhausted = True
            return b""
        line: bytes = self._raw.readline(self._left if limit < 0 else min(limit, self._left))
        self._left -= len(line)
        if self._left <= 0 and not line.endswith(b"\n"):
            self.exhausted = True
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _head_complete(buf: bytes | bytearray) -> bool:
    return b"\r\n\r\n" in buf or b"\n\n" in buf or len(buf) >= MAX_REQUEST_HEAD


class _HeadFirstServer:
    """A small HTTP server for probes and scrapes: one selector thread accepts connections and reads
    their request heads; a handler thread (at most :data:`MAX_CONNECTIONS`) answers a complete one."""

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=128)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.handler = handler
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        #: accepted connections still sending their head: (deadline, bytes so far), oldest first
        self._pending: dict[socket.socket, tuple[float, bytearray]] = {}

    def serve_forever(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.25):
                    if key.fileobj is self.socket:
                        self._accept(sel)
                    else:
                        self._read(sel, key.fileobj)  # type: ignore[arg-type]
                self._expire(sel)
        finally:
            for conn in list(self._pending):
                self._drop(sel, conn)
            sel.close()
            self._stopped.set()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):  # what is waiting in the backlog, a batch at a time
            try:
                conn, _addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, a connection reset before accept: go on
                return
            conn.setblocking(False)
            while len(self._pending) >= MAX_PENDING:
                self._drop(sel, next(iter(self._pending)))
            self._pending[conn] = (time.monotonic() + REQUEST_TIMEOUT, bytearray())
            sel.register(conn, selectors.EVENT_READ)

    def _read(self, sel: selectors.BaseSelector, conn: socket.socket) -> None:
        entry = self._pending.get(conn)
        if entry is None:
            return
        try:
            data = conn.recv(MAX_REQUEST_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, conn)
            return
        buf = entry[1]
        buf += data
        if not _head_complete(buf):
            return
        sel.unregister(conn)
        del self._pending[conn]
        if not self._slots.acquire(blocking=False):
            conn.close()
            return
        head = bytes(buf[:MAX_REQUEST_HEAD])
        try:
            threading.Thread(target=self._answer, args=(conn, head), name="asyncjobs-ops-request", daemon=True).start()
        except BaseException:
            self._slots.release()
            conn.close()
            raise

    def _answer(self, conn: socket.socket, head: bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(REQUEST_TIMEOUT)
            with contextlib.suppress(OSError):
                self.handler(conn, head, self)
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn, (deadline, _) in list(self._pending.items()):
            if deadline > now:
                break  # oldest first: the rest are younger
            self._drop(sel, conn)

    def _drop(self, sel: selectors.BaseSelector, conn: socket.socket) -> None:
        self._pending.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait(5)

    def server_close(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.close()


class Watchdog:
    """A daemon thread watching this process's loop heartbeat: while it is stale the lag gauge
    shows how long, and once it is staler than ``max_lag`` a warning names where the loop is."""

    def __init__(self, slot: Slot, max_lag: float, *, metrics_on: bool) -> None:
        self.slot = slot
        self.max_lag = max_lag
        self.metrics_on = metrics_on
        self.loop_thread = threading.get_ident()
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="asyncjobs-loop-watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        reported = False
        while not self._stop.wait(0.5):
            beat = self.slot.beat
            if not beat:
                continue
            stale = time.monotonic() - beat - LOOP_BEAT_INTERVAL
            if stale > 0.5 and self.metrics_on:
                metrics.set_loop_lag(stale)
            if stale > self.max_lag and not reported:
                reported = True
                # an async job holding the loop fails instead of stalling every job (and SIGTERM); imported
                # here: importing the engine's loggers before a DICT_CONFIG would get them disabled
                from asyncjobs.worker.executor import LoopBlockedError, interrupt_blocked_job

                LoopBlockedError.max_lag = self.max_lag
                if interrupt_blocked_job(self.loop_thread):
                    log.error("event loop blocked for %.1fs (more than --max-loop-lag %gs) by a job's own "
                              "code: that job is interrupted and fails", stale, self.max_lag)
                frame = sys._current_frames().get(self.loop_thread)
                where = "".join(traceback.format_stack(frame, limit=8)) if frame is not None else "?"
                log.warning(
                    "event loop blocked for %.1fs (more than --max-loop-lag %gs): a job is blocking it; "
                    "/livez answers 503 until it runs again. The loop is at:\n%s", stale, self.max_lag, where,
                )
            elif stale <= self.max_lag and reported:
                reported = False
                log.info("event loop running again")


class OpsServer:
    """``/livez``, ``/readyz`` (with a board) and ``/metrics`` (with a registry) on one port."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        board: HealthBoard | None = None,
        names: Sequence[str] = (),
        redis_client: Callable[[], Any] | None = None,
        max_loop_lag: float = 10.0,
        draining: Callable[[], bool] = lambda: False,
        alive: Callable[[int], bool] = lambda i: True,
        registry: Any = None,
        worker_keys: Sequence[str] | None = None,
    ) -> None:
        self.board = board
        self.names = list(names)
        #: the key each worker registers under (``rq:worker:<name>`` unless a key prefix says otherwise)
        self.worker_keys = list(worker_keys) if worker_keys is not None else [keys.worker(n) for n in self.names]
        self._redis_client = redis_client
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self.max_loop_lag = max_loop_lag
        self.draining = draining
        self.alive = alive
        self.registry = registry
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT

            def __init__(self, conn: socket.socket, head: bytes, srv: Any) -> None:
                self._head = head
                super().__init__(conn, conn.getpeername(), srv)

            def setup(self) -> None:
                super().setup()
                # the request head the server read already (a probe sends no body), one request each
                self.rfile = _HeadLimit(io.BytesIO(self._head), MAX_REQUEST_HEAD)  # type: ignore[assignment]
                self.close_connection = True

            def handle(self) -> None:
                self.handle_one_request()

            def parse_request(self) -> bool:
                ok = super().parse_request()
                if ok and getattr(self.rfile, "exhausted", False):
                    self.close_connection = True
                    self.send_error(431, f"request line and headers over {MAX_REQUEST_HEAD} bytes")
                    return False
                return ok

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and server.registry is not None:
                    body, ctype = metrics.exposition(server.registry, self.headers.get("Accept", ""))
                    self._send(200, body, ctype)
                elif path == "/livez" and server.board is not None:
                    ok, text = server.livez()
                    self._send(200 if ok else 503, text.encode() + b"\n", "text/plain; charset=utf-8")
                elif path == "/readyz" and server.board is not None:
                    ok, text = server.readyz()
                    self._send(200 if ok else 503, text.encode() + b"\n", "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /livez, /readyz or /metrics\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes are not news
                pass

        try:
            self.httpd = _HeadFirstServer((host, port), Handler)
        except OSError as exc:
            raise OSError(
                f"cannot listen on {host}:{port} for {self.what()} ({exc.strerror or exc}): choose a free port"
            ) from None
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None

    def what(self) -> str:
        parts = (["/livez", "/readyz"] if self.board is not None else []) + (
            ["/metrics"] if self.registry is not None else []
        )
        return ", ".join(parts)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="asyncjobs-ops-http", daemon=True)
        self._thread.start()
        host = self.httpd.server_address[0]
        log.info("serving %s on http://%s:%d", self.what(), host, self.port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._conn is not None:
            self._conn.close()

    # -- probes (run on the server's threads)
    def livez(self) -> tuple[bool, str]:
        assert self.board is not None
        now = time.monotonic()
        stuck = []
        for i, slot in enumerate(self.board.slots):
            beat = slot.beat
            if not beat or not self.alive(i):
                continue  # starting or restarting: not beating yet
            stale = now - beat
            if stale > self.max_loop_lag:
                stuck.append(f"{self._name(i)}: event loop blocked for {stale:.1f}s (--max-loop-lag {self.max_loop_lag:g})")
        return (False, "; ".join(stuck)) if stuck else (True, "ok")

    def readyz(self) -> tuple[bool, str]:
        assert self.board is not None
        if self.draining() or any(s.draining for s in self.board.slots):
            return False, "draining: shutting down after SIGTERM, finishing jobs in flight"
        problems = [f"{self._name(i)}: not registered yet" for i, s in enumerate(self.board.slots) if not s.registered]
        if problems:
            return False, "; ".join(problems)
        if self._redis_client is not None and self.names:
            try:
                with self._conn_lock:
                    if self._conn is None:
                        self._conn = self._redis_client()
                    conn = self._conn
                pipe = conn.pipeline(transaction=False)
                for key in self.worker_keys:
                    pipe.exists(key)
                found = pipe.execute()
            except Exception as exc:
                # no address or message: the probe is unauthenticated (the worker's log has the details)
                return False, f"Redis unreachable ({type(exc).__name__})"
            missing = [n for n, f in zip(self.names, found, strict=True) if not f]
            if missing:
                return False, f"not registered in Redis (rq:worker:<name> missing): {', '.join(missing)}"
        return True, "ok"

    def _name(self, i: int) -> str:
        return self.names[i] if i < len(self.names) else f"worker {i}"


def start_servers(
    *,
    metrics_port: int | None,
    metrics_host: str,
    health_port: int | None,
    health_host: str,
    board: HealthBoard,
    names: Sequence[str],
    redis_client: Callable[[], Any] | None,
    max_loop_lag: float,
    registry: Any,
    draining: Callable[[], bool] = lambda: False,
    alive: Callable[[int], bool] = lambda i: True,
    worker_keys: Sequence[str] | None = None,
) -> list[OpsServer]:
    """The health and metrics servers (one server when both ports are the same)."""
    servers: list[OpsServer] = []
    same = health_port is not None and metrics_port == health_port
    if health_port is not None:
        servers.append(OpsServer(
            health_host, health_port, board=board, names=names, redis_client=redis_client, worker_keys=worker_keys,
            max_loop_lag=max_loop_lag, draining=draining, alive=alive, registry=registry if same else None,
        ))
    if metrics_port is not None and not same:
        try:
            servers.append(OpsServer(metrics_host, metrics_port, registry=registry))
        except OSError:
            for s in servers:
                s.close()
            raise
    for s in servers:
        s.start()
    return servers


def close_servers(servers: Sequence[OpsServer]) -> None:
    for s in servers:
        with contextlib.suppress(Exception):
            s.close()
