"""ProvHttpServer.stop() in-process under CPython asyncio: listener and open connections closed, session ended."""

import asyncio
import sys

from fixtures_prov import FIRMWARE
import socket

import pytest

from rmkit.net import free_port

sys.path.insert(0, str(FIRMWARE))

from rmnode.http import ProvHttpServer  # noqa: E402


def test_stop_closes_listener_connections_and_session():
    closed = []
    port = free_port()

    async def scenario():
        server = ProvHttpServer("127.0.0.1", port, lambda sid, ep, body: body, session_closed=closed.append,
                                endpoints=("echo",))
        assert not server.running
        await server.start()
        assert server.running
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert await reader.readexactly(2) == b"hi"
        sid = server.session_id
        assert sid is not None and b"Set-Cookie: session=%d\r\n" % sid in head

        server.stop()
        assert not server.running
        assert closed == [sid]
        # the kept-alive connection is closed by the server
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        writer.close()
        server.stop()  # idempotent
        assert closed == [sid]

    asyncio.run(scenario())
    with pytest.raises(ConnectionRefusedError):  # listener gone
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
