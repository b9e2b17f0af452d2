"""bench/sse_client.py against a scripted HTTP server: framing, keep-alive, errors; and the
load generator (bench/load.py) end to end over it."""

import asyncio
import contextlib
import json

import pytest

from seekserve.bench.load import LoadConfig, run_load
from seekserve.bench.sse_client import HTTPStatusError, SSEConnection


class ScriptedServer:
    """Answers each request on a connection with the next scripted list of raw byte writes."""

    def __init__(self, responses: list[list[bytes]]):
        self.responses = list(responses)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        self.handlers: list[asyncio.Task] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.handlers.append(asyncio.current_task())
        try:
            while self.responses:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((request_line, headers, body))
                for piece in self.responses.pop(0):
                    if piece == b"<close>":
                        return
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.001)  # separate TCP segments
            await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await asyncio.wait_for(asyncio.gather(*self.handlers), 5)
        await self.server.wait_closed()


def chunked_head(status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/event-stream\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def collect(connection: SSEConnection, path: str = "/v1/x", body: bytes = b"{}") -> list:
    return [data async for data in connection.post_stream(path, body)]


def test_chunked_events_split_across_chunks_and_joined_in_one():
    response = [
        chunked_head(),
        chunk(b'data: {"a": 1}\n\ndata: {"b"'),  # one whole event and half of the next
        chunk(b": 2}\n\n"),
        chunk(b": a comment\n\nevent: x\ndata: line one\ndata: line two\n\n"),
        chunk(b"data: crlf\r\n\r\ndata:[DONE]\n\n"),
        b"0\r\n\r\n",
    ]

    async def main():
        server = ScriptedServer([response])
        async with server as url:
            connection = SSEConnection(url + "/prefix", headers={"Authorization": "Bearer k"})
            events = await collect(connection, "/v1/chat/completions", b'{"q": 1}')
            await connection.close()
        return server, events

    server, events = asyncio.run(main())
    assert events == [b'{"a": 1}', b'{"b": 2}', b"line one\nline two", b"crlf", b"[DONE]"]
    request_line, headers, body = server.requests[0]
    assert request_line == "POST /prefix/v1/chat/completions HTTP/1.1"
    assert headers["authorization"] == "Bearer k"
    assert headers["content-type"] == "application/json"
    assert body == b'{"q": 1}'


def test_keep_alive_reuses_one_connection_for_sequential_requests():
    def response(n: int) -> list[bytes]:
        return [chunked_head(), chunk(b"data: %d\n\n" % n), b"0\r\n\r\n"]

    async def main():
        server = ScriptedServer([response(1), response(2), response(3)])
        async with server as url:
            connection = SSEConnection(url)
            events = [await collect(connection) for _ in range(3)]
            await connection.close()
        return server, events

    server, events = asyncio.run(main())
    assert events == [[b"1"], [b"2"], [b"3"]]
    assert server.connections == 1
    assert len(server.requests) == 3


def test_a_server_that_closes_after_each_stream_gets_a_new_connection():
    # llama-server answers with Keep-Alive headers yet closes after each streamed response
    def response(n: int) -> list[bytes]:
        return [chunked_head(), chunk(b"data: %d\n\n" % n), b"0\r\n\r\n", b"<close>"]

    async def main():
        server = ScriptedServer([response(1), response(2), response(3)])
        async with server as url:
            connection = SSEConnection(url)
            first = await collect(connection)
            await asyncio.sleep(0.05)  # the close has arrived: seen before sending
            second = await collect(connection)
            third = await collect(connection)  # sent at once: the close is found on reading
            await connection.close()
        return server, [first, second, third]

    server, events = asyncio.run(main())
    assert events == [[b"1"], [b"2"], [b"3"]]
    assert server.connections == 3
    assert len(server.requests) == 3


def test_content_length_and_close_delimited_bodies():
    sized = b"data: one\n\ndata: two\n\n"
    sized_response = [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(sized),
        sized[:7],
        sized[7:],
    ]
    closing_response = [b"HTTP/1.1 200 OK\r\n\r\n", b"data: three\n\ndata: four", b"<close>"]

    async def main():
        server = ScriptedServer([sized_response, closing_response])
        async with server as url:
            connection = SSEConnection(url)
            first = await collect(connection)
            second = await collect(connection)  # same connection: Content-Length kept it open
            await connection.close()
        return server, first, second

    server, first, second = asyncio.run(main())
    assert first == [b"one", b"two"]
    assert second == [b"three", b"four"]  # the last event ended by the close, not a blank line
    assert server.connections == 1


def test_error_status_raises_with_status_and_body_and_the_next_request_reconnects():
    error_body = b'{"error": {"message": "bad max_tokens"}}'
    error_response = [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(error_body),
        error_body,
        b"<close>",
    ]
    ok_response = [chunked_head(), chunk(b"data: fine\n\n"), b"0\r\n\r\n"]

    async def main():
        server = ScriptedServer([error_response])
        server2 = ScriptedServer([ok_response])
        async with server as url:
            connection = SSEConnection(url)
            with pytest.raises(HTTPStatusError) as info:
                await collect(connection)
        async with server2 as url2:
            connection2 = SSEConnection(url2)
            events = await collect(connection2)
            await connection2.close()
        return info.value, events

    error, events = asyncio.run(main())
    assert error.status == 400
    assert error.body == error_body
    assert str(error) == f"HTTP 400: {error_body!r}"
    assert events == [b"fine"]


def test_server_closing_mid_chunk_is_a_connection_error():
    response = [chunked_head(), b"20\r\ndata: cut sho", b"<close>"]

    async def main():
        async with ScriptedServer([response]) as url:
            connection = SSEConnection(url)
            with pytest.raises(ConnectionError, match="closed the connection"):
                await collect(connection)

    asyncio.run(main())


def test_https_and_bad_urls():
    assert SSEConnection("https://example.com").port == 443
    assert SSEConnection("https://example.com").tls
    with pytest.raises(ValueError, match="ftp://x"):
        SSEConnection("ftp://x")


def chat_stream(tokens: list[str], prompt_tokens: int) -> list[bytes]:
    def event(payload: dict) -> bytes:
        return chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    pieces = [chunked_head(), event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    for token in tokens:
        pieces.append(event({"choices": [{"index": 0, "delta": {"content": token}}]}))
    pieces.append(event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}))
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens)}
    pieces.append(event({"choices": [], "usage": usage}))
    pieces += [chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]
    return pieces


def test_run_load_counts_tokens_from_usage_and_checks_ignore_eos():
    async def main():
        server = ScriptedServer([chat_stream(["a", "b", "c"], 7), chat_stream(["d", "e"], 9)])
        async with server as url:
            cfg = LoadConfig(
                base_url=url,
                prompts=["p1", "p2"],
                model="m",
                concurrency=1,
                requests=2,
                max_tokens=3,
                ignore_eos=True,
                repeat=1,
            )
            result = await run_load(cfg, log=lambda _: None)
        return server, result

    server, result = asyncio.run(main())
    run = result["runs"][0]
    assert (run["ok"], run["errors"], run["out_tokens"]) == (2, 0, 5)
    assert run["usage_problems"] == 1  # the second stopped at 2 of max_tokens 3
    assert "completion_tokens 2 != 3" in run["first_usage_problem"]
    assert run["prompt_tokens_mean"] == 8
    bodies = [json.loads(body) for _, _, body in server.requests]
    assert [b["messages"][0]["content"] for b in bodies] == ["p1", "p2"]
    assert all(b["stream"] and b["ignore_eos"] and b["max_tokens"] == 3 for b in bodies)
    assert server.connections == 1
