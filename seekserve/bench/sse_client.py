"""A lean HTTP/1.1 client for streaming POSTs, for the load generator (`bench/load.py`).

On a 2-core machine the load generator shares the CPU with the server it measures. httpx spent
~2 s of CPU per 8,192 streamed events (64 streams × 128 tokens; a quarter of a core for the whole
run), CPU the server under test then lacks. This client does only what a streaming chat request
needs, over asyncio streams: one keep-alive connection per worker, the request written in one
piece, the response body read as chunked, Content-Length or close-delimited, and cut into
server-sent events, whose `data:` payloads it yields.

    connection = SSEConnection("http://127.0.0.1:8000", headers={...}, timeout=300)
    async for payload in connection.post_stream("/v1/chat/completions", body_bytes):
        ...  # b'{"id": ...}', b'[DONE]'
    await connection.close()

`https://` URLs go through asyncio's TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class HTTPStatusError(RuntimeError):
    """A response other than 200: status code and the start of its body."""

    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


class SSEConnection:
    """One HTTP/1.1 connection to `base_url`, reopened whenever the server closes it."""

    def __init__(
        self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 300.0
    ):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"SSEConnection takes http:// or https:// URLs, not {base_url!r}")
        self.host = url.hostname
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.prefix = url.path.rstrip("/")
        self.timeout = timeout
        host_header = self.host if url.port is None else f"{self.host}:{url.port}"
        lines = [f"Host: {host_header}", "Accept: text/event-stream", "Connection: keep-alive"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self._headers = "\r\n".join(lines)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def post_stream(self, path: str, body: bytes) -> AsyncIterator[bytes]:
        """POST `body` (JSON) to prefix + `path`; yield each event's data, as sent.

        Raises HTTPStatusError for a status other than 200, ConnectionError when the server
        closes the connection mid-response, TimeoutError after `timeout` s without a byte.
        """
        request = (
            f"POST {self.prefix}{path} HTTP/1.1\r\n{self._headers}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        if self._reader is not None and self._reader.at_eof():
            await self.close()  # the server closed it after the last response
        reused = self._writer is not None
        reader = await self._send(request)
        keep_alive = False
        try:
            try:
                status, headers = await self._read_head(reader)
            except ConnectionError:
                if not reused:
                    raise
                # closed before answering: a kept-alive connection the server had given up
                # (llama-server closes after each stream); once more on a new one
                await self.close()
                reader = await self._send(request)
                status, headers = await self._read_head(reader)
            keep_alive = headers.get("connection", "").lower() != "close"
            if "chunked" in headers.get("transfer-encoding", "").lower():
                pieces = self._chunked(reader)
            elif "content-length" in headers:
                pieces = self._sized(reader, int(headers["content-length"]))
            else:
                keep_alive = False
                pieces = self._until_close(reader)
            if status != 200:
                raw = b"".join([piece async for piece in pieces])
                raise HTTPStatusError(status, raw)
            buffer = b""
            async for piece in pieces:
                buffer += piece
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n")
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    data = _event_data(event)
                    if data is not None:
                        yield data
            data = _event_data(buffer)  # an event the body ended without a blank line after
            if data is not None:
                yield data
        except BaseException:
            keep_alive = False
            raise
        finally:
            if not keep_alive:
                await self.close()

    async def _send(self, request: bytes) -> asyncio.StreamReader:
        if self._writer is None:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.tls or None), self.timeout
            )
        self._writer.write(request)
        return self._reader

    async def _read(self, awaitable):
        # asyncio.timeout, not wait_for: wait_for wraps each read in a task of its own (3.11),
        # a third of this client's CPU per streamed event
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except asyncio.IncompleteReadError as error:
            raise ConnectionError("the server closed the connection mid-response") from error

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        while True:
            raw = await self._read(reader.readuntil(b"\r\n\r\n"))
            status_line, *header_lines = raw.decode("latin-1").split("\r\n")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ConnectionError(f"not an HTTP response: {status_line[:100]!r}")
            headers = {}
            for line in header_lines:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            status = int(parts[1])
            if status != 100:  # 100 Continue: the real head follows
                return status, headers

    async def _chunked(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        """The body's chunks, as many as have arrived joined into one piece per read."""
        buffer = b""
        while True:
            pieces = []
            while (eol := buffer.find(b"\r\n")) >= 0:
                size = int(buffer[:eol].split(b";", 1)[0].strip(), 16)
                if size == 0:
                    if pieces:
                        yield b"".join(pieces)
                    buffer = buffer[eol:]  # the trailer section ends with an empty line
                    while buffer.find(b"\r\n\r\n") < 0:
                        buffer += await self._read_some(reader)
                    return
                end = eol + 2 + size
                if len(buffer) < end + 2:
                    break
                pieces.append(buffer[eol + 2 : end])
                buffer = buffer[end + 2 :]
            if pieces:
                yield b"".join(pieces)
            buffer += await self._read_some(reader)

    async def _read_some(self, reader: asyncio.StreamReader, limit: int = 1 << 16) -> bytes:
        piece = await self._read(reader.read(limit))
        if not piece:
            raise ConnectionError("the server closed the connection mid-response")
        return piece

    async def _sized(self, reader: asyncio.StreamReader, length: int) -> AsyncIterator[bytes]:
        while length > 0:
            piece = await self._read_some(reader, min(length, 1 << 16))  # not past the body
            length -= len(piece)
            yield piece

    async def _until_close(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        while piece := await self._read(reader.read(1 << 16)):
            yield piece


def _event_data(event: bytes) -> bytes | None:
    """The data of one server-sent event (its `data:` lines joined by newlines), or None."""
    if event.startswith(b"data:") and b"\n" not in event:  # the common case: one line
        data = event[5:]
        return data[1:] if data.startswith(b" ") else data
    lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)
