"""Running the app under uvicorn: in the foreground (`domaintune serve`) or in a thread (tests, bench).

Graceful shutdown is uvicorn's: on SIGTERM or Ctrl-C it closes the listening socket, lets the
requests in flight finish (up to `graceful_timeout_s`), then runs the app's lifespan shutdown,
which drains the engine.

    run_server(build_app(served, options), host="127.0.0.1", port=8000)

    with serve_in_thread(app) as base_url:          # "http://127.0.0.1:54321"
        httpx.get(base_url + "/health")
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from domaintune.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


def run_server(app: Any, host: str = DEFAULT_HOST, port: int = 8000, *, graceful_timeout_s: float = 120.0,
               log_level: str = "info", insecure_no_auth: bool = False) -> None:
    """Serve `app` until SIGTERM/SIGINT, then finish the requests in flight and return.

    Args:
        app: the ASGI app (`app.build_app`).
        host: the address to bind; loopback unless told otherwise.
        port: the TCP port.
        graceful_timeout_s: the longest wait for in-flight requests at shutdown.
        log_level: uvicorn's log level.
        insecure_no_auth: serve a non-loopback address without an API key (refused otherwise).

    Raises:
        UserError: a non-loopback `host` without an API key, unless `insecure_no_auth`.

    Example:
        >>> run_server(build_app(load_served("embedded")), port=8000)   # doctest: +SKIP
    """
    check_bind(host, _has_api_key(app), insecure_no_auth)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=graceful_timeout_s)
    uvicorn.Server(config).run()


def check_bind(host: str, has_api_key: bool, insecure_no_auth: bool = False) -> None:
    """Refuse a non-loopback address without an API key, unless `insecure_no_auth` (then warn).

    Raises:
        UserError: naming the address and the two ways out.
    """
    if _is_loopback(host) or has_api_key:
        return
    if not insecure_no_auth:
        raise UserError(f"refusing to serve on {host} without an API key: anyone who can reach the port could "
                        "use the model", hint="pass --api-key KEY (or set $DOMAINTUNE_API_KEY), or "
                        "--insecure-no-auth to serve it open")
    log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = DEFAULT_HOST, *, graceful_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `app` on a free port in a background thread for the duration of the block.

    Leaving the block shuts the server down gracefully (in-flight requests finish first).

    Args:
        app: the ASGI app.
        host: the loopback address to bind.
        graceful_timeout_s: the longest wait for in-flight requests at shutdown.

    Yields:
        The base URL, e.g. "http://127.0.0.1:54321".

    Raises:
        RuntimeError: the server did not start within 30 s.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_timeout_s)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="domaintune-uvicorn", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(graceful_timeout_s + 10)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread, timeout_s: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if server.started or not thread.is_alive():
            break
        done.wait(0.01)
    if not server.started:
        raise RuntimeError("the server did not start")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _has_api_key(app: Any) -> bool:
    service = getattr(getattr(app, "state", None), "service", None)
    return bool(service is not None and service.options.api_key)
