"""ProvHttpServer.stop() + wait_closed() inside one process (for the unix port, where the test cannot run
in-process): prints one `check <name> <value>` line per observation.

usage: launch_http_stop_check.py FIRMWARE_DIR PORT
"""

import socket
import sys

sys.path.insert(0, sys.argv[1])

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio

from rmnode.http import ProvHttpServer

PORT = int(sys.argv[2])
closed = []


async def main():
    server = ProvHttpServer("127.0.0.1", PORT, lambda sid, ep, body: body, session_closed=closed.append,
                            endpoints=("echo",))
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    await writer.drain()
    answer = await reader.read(300)
    print("check answered", answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\nhi"))
    print("check session_set", server.session_id is not None)
    sid = server.session_id
    server.stop()
    await server.wait_closed()
    print("check running", server.running)
    print("check session_closed", closed == [sid])
    print("check kept_alive_connection_closed", await asyncio.wait_for(reader.read(10), 3) == b"")
    probe = socket.socket()
    try:
        probe.connect(socket.getaddrinfo("127.0.0.1", PORT)[0][-1])
        print("check listener_closed", False)
    except OSError:
        print("check listener_closed", True)
    probe.close()


asyncio.run(main())
