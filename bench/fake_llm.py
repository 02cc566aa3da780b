"""A local chat-completions server for benchmarks: streams each answer over a delay.

    python -m bench.fake_llm [--port 0] [--delay 0.5] [--pieces 10] [--stamp]

POST /v1/chat/completions answers 200 with Server-Sent Events, chunked, on a
keep-alive connection (as OpenAI, vLLM and llama.cpp do): ``pieces`` content
events spread evenly over ``delay`` seconds, a usage event, then [DONE]. GET
/stats answers {"requests", "active", "peak"} (streams served, open now, most
open at once). asyncio, one process: thousands of open streams cost it little,
so it is never what a benchmark measures. Prints its port on the first line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

STATS = {"requests": 0, "active": 0, "peak": 0}


def event(payload: dict) -> bytes:
    data = b"data: " + json.dumps(payload).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


STAMP = False  # --stamp: each piece carries its send time (bench_streams)


def piece(n: int) -> bytes:
    # With --stamp the text says when it left ("w3@1764751234.567890 "), so a
    # client reading it through CLAW's streams can tell how long it took.
    text = f"w{n}@{time.time():.6f} " if STAMP else f"word{n} "
    delta = {"content": text}
    return event({"model": "bench-model", "choices": [{"index": 0, "delta": delta}]})


HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bool]:
    """(method, path, whether the client asked to close after the answer)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    if length:
        await reader.readexactly(length)  # the prompt: not needed to answer
    return method, path, headers.get("connection", "").lower() == "close"


async def stream(writer: asyncio.StreamWriter, delay: float, pieces: int) -> None:
    STATS["requests"] += 1
    STATS["active"] += 1
    STATS["peak"] = max(STATS["peak"], STATS["active"])
    try:
        writer.write(HEAD)
        for n in range(pieces):
            await asyncio.sleep(delay / pieces)
            writer.write(piece(n))
            await writer.drain()
        usage = {"prompt_tokens": 12, "completion_tokens": pieces}
        writer.write(event({"model": "bench-model", "choices": [], "usage": usage}))
        writer.write(b"%x\r\n%s\r\n" % (14, b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
    finally:
        STATS["active"] -= 1


def json_response(body: dict, status: int = 200) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (status, len(data), data)
    )


async def serve(reader, writer, delay: float, pieces: int) -> None:
    try:
        close = False
        while not close:
            method, path, close = await read_request(reader)
            if method == "POST" and path.endswith("/chat/completions"):
                await stream(writer, delay, pieces)
            elif path == "/stats":
                writer.write(json_response(STATS))
                await writer.drain()
            else:
                writer.write(json_response({"error": {"message": "not found"}}, 404))
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client closed the connection (or was cut at its deadline)
    finally:
        writer.close()


async def main(port: int, delay: float, pieces: int) -> None:
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, delay, pieces), "127.0.0.1", port, backlog=1024
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--pieces", type=int, default=10)
    parser.add_argument("--stamp", action="store_true", help="send times in text")
    args = parser.parse_args()
    STAMP = args.stamp
    try:
        asyncio.run(main(args.port, args.delay, args.pieces))
    except KeyboardInterrupt:
        sys.exit(0)
