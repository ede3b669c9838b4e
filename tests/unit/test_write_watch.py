"""The stream write watch lets a client go when it takes no byte for the limit, and only then:
one that reads slowly but steadily through a large write is not cut (timing the write alone cut
a client reading a steady 100 KB/s, when one upstream read of up to 1 MiB became one write)."""

from __future__ import annotations

from gateway.api.write_watch import WriteWatches


class FakeTransport:
    def __init__(self, size: int) -> None:
        self.size = size
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.size

    def is_closing(self) -> bool:
        return self.aborted

    def get_extra_info(self, name: str) -> object:
        return None  # no socket: the buffer alone

    def abort(self) -> None:
        self.aborted = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_write_the_client_keeps_taking_is_not_cut_and_one_it_stops_taking_is() -> None:
    clock = Clock()
    watches = WriteWatches(1.0, clock=clock)
    transport = FakeTransport(1_000_000)
    watch = watches.watch(transport, "req_1")  # type: ignore[arg-type]
    watch.begin()  # a 1 MB write, taken 40 KB a sweep: 6 s, six times the limit
    for _ in range(24):
        clock.now += 0.25
        transport.size -= 40_000
        watches._sweep()
    assert not transport.aborted and watch in watches.active
    for _ in range(3):  # then nothing for 0.75 s: under the limit
        clock.now += 0.25
        watches._sweep()
    assert not transport.aborted
    clock.now += 0.25  # nothing for a whole second: gone
    watches._sweep()
    assert transport.aborted and watch not in watches.active


async def test_a_client_that_takes_nothing_is_cut_after_the_limit_and_no_sooner() -> None:
    clock = Clock()
    watches = WriteWatches(1.0, clock=clock)
    transport = FakeTransport(200_000)
    watch = watches.watch(transport, "req_2")  # type: ignore[arg-type]
    watch.begin()
    clock.now += 0.9
    watches._sweep()
    assert not transport.aborted
    watch.end()  # the write went through: the time between writes (an upstream thinking) never counts
    clock.now += 30
    watches._sweep()
    assert not transport.aborted
    watch.begin()
    clock.now += 1.0
    watches._sweep()
    assert transport.aborted


async def test_what_the_kernel_holds_counts_as_untaken() -> None:
    """The kernel takes megabytes of an answer on a local connection: the transport's buffer
    then stays the same for seconds while the client reads, and only the socket's send queue
    shows it taking bytes."""
    import asyncio
    import socket
    import sys

    from gateway.api.write_watch import untaken

    if sys.platform != "linux":
        return
    server, client = socket.socketpair()
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server)
    try:
        transport.write(b"x" * 100_000)
        await asyncio.sleep(0.05)
        before = untaken(transport)  # type: ignore[arg-type]
        client.recv(50_000)
        await asyncio.sleep(0.05)
        assert before >= 100_000 and untaken(transport) < before  # type: ignore[arg-type]
    finally:
        transport.close()
        client.close()
