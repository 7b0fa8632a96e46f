"""Run rmnode.http.ProvHttpServer with a trivial echo dispatch, under CPython or the MicroPython unix port.

usage: launch_http_echo.py FIRMWARE_DIR PORT [READ_TIMEOUT_S IDLE_TIMEOUT_S]
Endpoints: echo (answers "sid=<session> ep=<endpoint> body=" + body), fail (handler error -> 500),
gone (dispatch raises LookupError -> 404), closed (comma list of session ids passed to session_closed).
"""

import sys

sys.path.insert(0, sys.argv[1])

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio

from rmnode.http import ProvHttpServer

closed_sessions = []


def dispatch(session_id, endpoint, body):
    if endpoint == "echo":
        return ("sid=%d ep=%s body=" % (session_id, endpoint)).encode() + body
    if endpoint == "fail":
        raise ValueError("handler failed on purpose")
    if endpoint == "gone":
        raise LookupError(endpoint)
    if endpoint == "closed":
        return ",".join([str(s) for s in closed_sessions]).encode()
    raise RuntimeError("endpoint list and dispatch disagree: " + endpoint)


async def main():
    port = int(sys.argv[2])
    read_timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    idle_timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    server = ProvHttpServer("127.0.0.1", port, dispatch, session_closed=closed_sessions.append,
                            read_timeout_s=read_timeout, idle_timeout_s=idle_timeout,
                            endpoints=("echo", "fail", "gone", "closed"))
    await server.start()
    print("READY")
    while server.running:
        await asyncio.sleep(1)


asyncio.run(main())
