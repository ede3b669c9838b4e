"""An HTTP forward proxy for tests: ``CONNECT`` tunnels and absolute-form plain HTTP, as squid
or a corporate egress proxy serves them.

``routes`` maps a ``host:port`` the client asks for to the address really connected to, so a
test can name a vendor host (``api.openai.test``) that only the proxy knows: a client that
resolved the name itself would fail. It records what it was asked (the CONNECT targets, the
plain requests' first lines, the ``proxy-authorization`` values), can require credentials
(407 without them) and can refuse chosen targets (403)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ConnectProxy:
    routes: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: the ``proxy-authorization`` value it requires (None: any or none)
    credentials: str | None = None
    #: targets (``host:port``) it refuses with 403
    refused: set[str] = field(default_factory=set)
    #: answer nothing to a CONNECT (a proxy that hangs)
    silent: bool = False
    connects: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _address(self, target: str) -> tuple[str, int]:
        if target in self.routes:
            return self.routes[target]
        host, _, port = target.rpartition(":")
        return host.strip("[]"), int(port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head[:-4].decode("latin-1").split("\r\n")
            headers = {name.strip().lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
            method, target, _ = line.split(" ", 2)
            authorization = headers.get("proxy-authorization")
            self.authorizations.append(authorization)
            if method == "CONNECT":
                self.connects.append(target)
                if self.silent:
                    await reader.read()
                    return
            else:
                self.forwarded.append(line)
                parts = urlsplit(target)
                target = f"{parts.hostname}:{parts.port or 80}"
            if self.credentials is not None and authorization != self.credentials:
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'proxy-authenticate: Basic realm="test"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n'
                )
                return
            if target in self.refused:
                writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            up_reader, up_writer = await asyncio.open_connection(*self._address(target))
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_writer.write(head)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
