"""A small threaded HTTP proxy on 127.0.0.1 in front of a real started server, with one
injectable fault in streamed (server-sent event) answers:

- ``corrupt``: the ``at``-th ``data:`` event's JSON is replaced with garbage;
- ``close``: the connection is dropped after ``at`` events, mid-stream (no end chunk);
- ``hang``: nothing more is sent after ``at`` events, the socket stays open until ``stop``;
- ``more_tokens``: a streamed request's ``max_tokens``/``min_tokens`` are raised by ``at``,
  so the real server generates more than the client asked (a server that ignores max_tokens);
- ``no_usage``: the stream's ``usage`` is dropped (a server that sends none when streaming).

Non-streamed requests (token counts, model lists) pass through untouched. A streamed answer
goes to the client chunked, as the real servers send it, one event line at a time.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

FAULTS = ("corrupt", "close", "hang", "more_tokens", "no_usage")
GARBAGE = b'data: {"choices": [{"text": "tru'


class FaultProxy:
    """``with FaultProxy(server.url, "corrupt", at=3) as proxy:`` then talk to ``proxy.url``."""

    def __init__(self, upstream: str, fault: str | None = None, at: int = 1) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        parts = urlsplit(upstream)
        assert parts.hostname in ("127.0.0.1", "localhost"), "the proxy fronts loopback only"
        self.upstream = (parts.hostname, parts.port)
        self.fault = fault
        self.at = at
        self.events = 0  # data events forwarded, all requests together
        self.released = threading.Event()  # ends a hang
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

            def do_GET(self) -> None:
                proxy._forward(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                proxy._forward(self, self.rfile.read(length))

        return Handler

    def _rewrite(self, body: bytes) -> tuple[bytes, bool]:
        """The request body as sent upstream, and whether its answer is a stream."""
        try:
            request = json.loads(body)
        except ValueError:
            return body, False
        stream = isinstance(request, dict) and bool(request.get("stream"))
        if stream and self.fault == "more_tokens":
            for key in ("max_tokens", "min_tokens"):
                if key in request:
                    request[key] += self.at
            body = json.dumps(request).encode()
        return body, stream

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        stream = False
        if body is not None:
            body, stream = self._rewrite(body)
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            answer = upstream.getresponse()
            handler.send_response(answer.status)
            for name in ("Content-Type", "Server"):
                if answer.getheader(name):
                    handler.send_header(name, answer.getheader(name))
            handler.send_header("Connection", "close")
            handler.close_connection = True
            if not stream or answer.status >= 400:
                data = answer.read()
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)
                return
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            self._stream(handler, answer)
        except (OSError, http.client.HTTPException):
            handler.close_connection = True  # the client's side goes when the handler ends
        finally:
            upstream.close()

    def _stream(self, handler: BaseHTTPRequestHandler, answer: http.client.HTTPResponse) -> None:
        def send(data: bytes) -> None:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()

        count = 0
        for line in iter(answer.readline, b""):
            if line.startswith(b"data:") and line.strip() != b"data: [DONE]":
                count += 1
                with self._lock:
                    self.events += 1
                if self.fault == "corrupt" and count == self.at:
                    line = GARBAGE + b"\n"
                if self.fault == "no_usage" and b'"usage"' in line:
                    event = json.loads(line[len(b"data:") :])
                    event.pop("usage", None)
                    if not event.get("choices"):
                        continue  # a usage-only event: not sent at all
                    line = b"data: " + json.dumps(event).encode() + b"\n"
            send(line)
            if count >= self.at and self.fault in ("close", "hang") and not line.strip():
                if self.fault == "hang":
                    self.released.wait()
                # dropped mid-stream: no terminating chunk, the socket just closes
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
        handler.wfile.write(b"0\r\n\r\n")
