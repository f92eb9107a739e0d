"""The client's response read size (see agent.peers.client.RESPONSE_READ_BYTES), over a real
loopback socket: a body that is already waiting in the socket arrives in reads larger
than httpcore's default 64 KiB."""

import httpcore
import trio

from agent.peers.client import ClientFactory
from agent.peers.transport import RESPONSE_READ_BYTES
from helpers import hours_ago, make_name

BODY = 1024 * 1024


def test_read_size_is_set_on_httpcore():
    # fails loudly if an httpcore release renames the constant (the tuning would
    # silently stop working otherwise); the client factory sets it
    assert "READ_NUM_BYTES" in vars(httpcore.AsyncHTTP11Connection)
    ClientFactory()
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == RESPONSE_READ_BYTES > 64 * 1024


async def test_waiting_body_arrives_in_large_reads():
    body = bytes(range(256)) * (BODY // 256)
    name = make_name(body, hours_ago(2))
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def serve_one() -> None:
        stream = await listener.accept()
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive_some(4096)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
            await stream.send_all(body)
            await stream.receive_some(1)  # until the client closes

    client = ClientFactory().client(f"http://127.0.0.1:{port}")
    sizes = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        async with client.download(name, 2 * BODY) as (size, chunks):
            # the body fills the socket buffers meanwhile: each read then finds more
            # than 64 KiB waiting, and takes it all unless it reads at most 64 KiB
            await trio.sleep(0.05)
            async for chunk in chunks:
                sizes.append(len(chunk))
        await client.aclose()
        nursery.cancel_scope.cancel()
    await listener.aclose()
    assert size == BODY and sum(sizes) == BODY
    assert max(sizes) > 64 * 1024, sizes
