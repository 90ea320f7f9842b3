"""Run the HTTP app of a PromptBank under uvicorn on one socket bound here.

Invariant: the address printed ("spt serve: listening on http://HOST:PORT") is the bound one
(port 0 picks a free port), and is printed only once the socket accepts connections;
SIGINT / SIGTERM stop accepting, answer what is in flight, then exit with code 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from typing import Any, Iterator


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after its graceful stop, so the process would die by
            # it; a stop asked for is a normal end here (exit code 0), as for `spt train`.
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def serve_forever(bank: Any, host: str = "127.0.0.1", port: int = 8000, **app_options: Any) -> None:
    import uvicorn

    from .app import create_app

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(create_app(bank, **app_options), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=10)
    server = _server_class()(config)
    url = f"http://[{host}]:{bound}" if family == socket.AF_INET6 else f"http://{host}:{bound}"
    names = ", ".join(t.name for t in bank.tasks())

    async def announce_when_started() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"spt serve: listening on {url} ({len(bank.tasks())} tasks on {bank.device}: {names})",
              file=sys.stderr, flush=True)

    async def main() -> None:
        announce = asyncio.ensure_future(announce_when_started())
        await server.serve(sockets=[sock])
        announce.cancel()

    asyncio.run(main())
    print("spt serve: stopped", file=sys.stderr, flush=True)
