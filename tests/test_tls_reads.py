"""TLS reads gather buffered records (agent.peers.tls._gathering_receive_some), over a real
loopback TLS connection: without it every read returns one 16 KiB record."""

import ssl

import trio
import trustme

import agent.peers.tls  # noqa: F401  (installs the gathering reads)

BODY = bytes(range(256)) * 160  # 40 KiB: three records, fits in the socket buffers


def contexts():
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def test_installed_on_trio_and_trio_still_has_what_it_uses():
    assert trio.SSLStream.receive_some is agent.peers.tls._gathering_receive_some
    # the buffered records are read from this (private) attribute: fail loudly if a
    # trio release renames it
    assert "_ssl_object" in trio.SSLStream.__init__.__code__.co_names
    # and the transport reads' size is this module constant, read at each call
    assert trio._highlevel_socket.DEFAULT_RECEIVE_SIZE == agent.peers.tls.TRANSPORT_READ_BYTES
    assert "DEFAULT_RECEIVE_SIZE" in trio.SocketStream.receive_some.__code__.co_names


async def test_buffered_records_come_in_one_read_and_the_close_after_them():
    server_ctx, client_ctx = contexts()
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    sent = trio.Event()

    async def serve_one() -> None:
        stream = trio.SSLStream(await listener.accept(), server_ctx, server_side=True)
        await stream.send_all(BODY)
        sent.set()
        await stream.aclose()  # close_notify right behind the data

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        client = trio.SSLStream(raw, client_ctx, server_hostname="127.0.0.1",
                                https_compatible=True)
        await client.do_handshake()
        with trio.move_on_after(5):  # everything is in the socket buffers by then
            await sent.wait()
        received, sizes = b"", []
        while data := await client.receive_some(len(BODY)):
            received += data
            sizes.append(len(data))
        assert received == BODY
        assert max(sizes) > 16 * 1024, sizes
        assert await client.receive_some(100) == b""  # the close is still reported
        await client.aclose()
    await listener.aclose()
