"""Test helper: a real ``dlm serve`` app on uvicorn in a background thread, on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn

from dlm.engine import EngineConfig
from dlm.server.app import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(app, log_level: str = "error"):
    """Serve an ASGI ``app`` at http://127.0.0.1:PORT (yields that base URL) until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level,
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextlib.contextmanager
def running_server(model, name: str = "test-model", config: EngineConfig | None = None, **app_kwargs):
    """Serve ``model`` with ``dlm serve``'s app (yields the base URL, without /v1) until the block ends."""
    with serve_app(create_app(model, name, config, **app_kwargs)) as url:
        yield url
