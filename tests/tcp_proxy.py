"""A TCP proxy for outage tests: forwards a local port to a real server and can be cut.

The server may listen on TCP or on a unix socket (the embedded PostgreSQL and Redis of the
default test run do); the proxy always listens on TCP, and :meth:`TcpProxy.url_for` gives
the URL that reaches the server through it.

Never stop the machine's shared PostgreSQL or Redis (other tests use them); put this proxy
between the code under test and the server instead, and cut it::

    proxy = await TcpProxy.start("127.0.0.1", 5432)
    url = proxy.url_for(database_url)   # the same URL through the proxy
    await proxy.cut()                    # live connections closed, new ones refused
    await proxy.restore()                # new connections forwarded again
    await proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class TcpProxy:
    """Listens on 127.0.0.1 (a free port) and forwards each connection to ``host:port``, or
    to the unix socket ``host`` when ``port`` is None."""

    def __init__(self, host: str, port: int | None) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @classmethod
    async def start(cls, host: str, port: int | None) -> TcpProxy:
        proxy = cls(host, port)
        await proxy.restore()
        return proxy

    @classmethod
    async def for_url(cls, url: str) -> TcpProxy:
        """A proxy in front of the server a URL (postgresql://, redis://) points at."""
        parts = urlsplit(url)
        if parts.scheme == "unix":  # redis over a unix socket
            return await cls.start(parts.path, None)
        socket_dir = dict(parse_qsl(parts.query)).get("host", "")
        if socket_dir.startswith("/"):  # libpq's unix socket: DIR/.s.PGSQL.PORT
            port = parts.port or int(dict(parse_qsl(parts.query)).get("port", 5432))
            return await cls.start(str(Path(socket_dir) / f".s.PGSQL.{port}"), None)
        assert parts.hostname and parts.port, url
        return await cls.start(parts.hostname, parts.port)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        if parts.scheme == "unix":
            db = dict(parse_qsl(parts.query)).get("db", "0")
            return f"redis://127.0.0.1:{self.port}/{db}"
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        # A unix socket named in the query would take precedence over the proxy's address.
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    async def restore(self) -> None:
        """Listen (again, on the same port) and forward new connections."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Close every live connection and stop listening, so new ones are refused."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self._target
        try:
            if port is None:
                up_reader, up_writer = await asyncio.open_unix_connection(host)
            else:
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)
            self._writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        # One side closed: close the other, as a real connection would.
        writer.transport.abort()
