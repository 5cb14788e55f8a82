"""A real HTTP endpoint that takes what Sentry's SDK sends to a DSN (``POST /api/<project>/envelope/``).

For worker subprocesses initialised with ``sentry_sdk.init(dsn=server.dsn)``: the SDK's own
HTTP transport posts (gzip-compressed) envelopes here; :meth:`SentryIngest.items` decodes them
with the SDK's envelope parser.  Answers 200 like Sentry; serves from a thread.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SentryIngest:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if "/envelope/" in self.path:
                    with ingest.lock:
                        ingest.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="sentry-ingest", daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def items(self, kind: str) -> list[dict[str, Any]]:
        """Payloads of every envelope item of type ``kind`` (``event``, ``transaction``, ``span``,
        ``check_in``) received.  The SDK's parser decodes only events; the others are JSON too."""
        from sentry_sdk.envelope import Envelope

        with self.lock:
            bodies = list(self.bodies)
        out = []
        for body in bodies:
            for item in Envelope.deserialize(body).items:
                if item.type != kind:
                    continue
                payload = item.payload.json
                if payload is None:
                    payload = json.loads(item.payload.get_bytes())
                out.append(payload)
        return out

    def __enter__(self) -> SentryIngest:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
