"""CPU per WebSocket text frame on the server's send path (Starlette ``WebSocket.send_text``
through uvicorn), for each of uvicorn's WebSocket implementations: what a chat gateway pays
per socket delivery once the frame is encoded.

A uvicorn server (a child process per implementation) accepts ``--sockets`` sockets; each gets
``--frames`` chat-sized frames sent back to back, as a socket's pump sends them; the clients
(this process) read them all. Reported: the server process's CPU time (user + system, from
/proc) per frame, and frames per second. CPU per frame holds on a loaded machine; the rate
does not.

Usage: python bench/ws_send.py [--sockets S] [--frames F] [--ws websockets wsproto ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import websockets

FRAME = (
    '{"id":"01a2337f-55e1-7000-aa80-ea59d01ef59d","room":"lobby","sender":"ann",'
    '"text":"hello, this is a chat message of ordinary length",'
    '"sent_at":"2026-12-01T21:16:28.828Z"}'
)
IMPLEMENTATIONS = ("websockets", "websockets-sansio", "wsproto")

SERVER = """
import sys
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
import uvicorn

FRAMES = int(sys.argv[3])
FRAME = sys.argv[4]

async def endpoint(websocket):
    await websocket.accept()
    for _ in range(FRAMES):
        await websocket.send_text(FRAME)
    await websocket.receive()  # the client's close

app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), ws=sys.argv[1], log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _one(ws: str, sockets: int, frames: int) -> tuple[float, float]:
    port = _free_port()
    argv = [sys.executable, "-c", SERVER, ws, str(port), str(frames), FRAME]
    server = subprocess.Popen(argv)  # noqa: ASYNC220 (started before anything is measured)
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                await asyncio.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/ws"
        before = _cpu(server.pid)
        started = time.perf_counter()

        async def client() -> None:
            async with websockets.connect(url, max_queue=None) as connection:
                for _ in range(frames):
                    await connection.recv()

        await asyncio.gather(*(client() for _ in range(sockets)))
        seconds = time.perf_counter() - started
        cpu = _cpu(server.pid) - before
    finally:
        server.terminate()
        server.wait()
    total = sockets * frames
    return 1e6 * cpu / total, total / seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--ws", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    args = parser.parse_args()
    print(
        f"{args.sockets} sockets x {args.frames:,} frames of {len(FRAME)} bytes;"
        f" load average {os.getloadavg()[0]:.1f}"
    )
    for ws in args.ws:
        per_frame, rate = await _one(ws, args.sockets, args.frames)
        print(f"  {ws:<18} server CPU {per_frame:6.1f} µs per frame   {rate:>9,.0f} frames/s")
    print(f"  load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
