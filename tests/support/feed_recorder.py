"""A pass-through in front of Entity Permissions Core's feed that notes what was asked.

The simulator keeps no log of feed requests, and a poller's cursor is only visible in
poller_cursors after a page is stored: where a poller *resumed* (the cursor it sent
first) is seen here, on the wire.
"""

from __future__ import annotations

import http.server
import threading
from urllib.parse import parse_qs, urlsplit

import httpx

FEED_PATH = "/api/v1/events"
# Headers of an answer that are the hop's own, not the feed's.
_HOP_HEADERS = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive"})


class FeedRecorder:
    """A real HTTP server on 127.0.0.1, in threads of its own, that passes every GET to
    `target` and answers what it answered; `cursors` holds the `after` of each feed
    request (None for one without), in the order they arrived.

    Threads, not the test's event loop: the test waits in blocking calls (a process's
    exit) while the poller keeps asking.
    """

    def __init__(self, target: str) -> None:
        self._cursors: list[str | None] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=target, timeout=30)
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                recorder.forward(self)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test's output is for its own failures."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FeedRecorder:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def requested(self) -> list[str | None]:
        """The cursors asked for so far."""
        with self._lock:
            return list(self._cursors)

    def forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        if url.path == FEED_PATH:
            after = parse_qs(url.query).get("after")
            with self._lock:
                self._cursors.append(after[0] if after else None)
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "host"}
        try:
            answer = self._client.get(handler.path, headers=headers)
        except httpx.HTTPError:
            handler.send_error(502, "the feed did not answer")
            return
        handler.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in _HOP_HEADERS and name.lower() != "content-encoding":
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(answer.content)))
        handler.end_headers()
        handler.wfile.write(answer.content)
