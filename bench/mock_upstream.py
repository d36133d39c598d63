"""A fast OpenAI-compatible mock upstream for benchmarks (aiohttp low-level server + uvloop).

    POST /v1/chat/completions            a fixed chat.completion with usage (unary)
    POST ... with "stream": true         N chunks + a usage chunk + ``data: [DONE]``
    GET  anything                        200 "ok" (readiness probe)

Every body is encoded once at start; a request costs one JSON parse of the
(small) request body and the writes. Run it standalone::

    .venv/bin/python bench/mock_upstream.py --port 9100 --chunks 50 --chunk-delay-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import orjson
from aiohttp import web

MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_700_000_000
COMPLETION_ID = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
FINGERPRINT = "fp_0ba0d124f1"
WORDS = ("Hello", " there", "!", " How", " can", " I", " help", " you", " today", "?")


def completion_body(prompt_tokens: int = 12, completion_tokens: int = 9) -> bytes:
    return orjson.dumps(
        {
            "id": COMPLETION_ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Hello there! How can I help you today?",
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
    )


def _frame(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(delta: dict[str, object], finish: str | None) -> bytes:
    return _frame(
        {
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
    )


def stream_frames(n: int) -> list[bytes]:
    """``n`` chat.completion.chunk frames (role first, finish_reason last), usage, [DONE]."""
    n = max(n, 2)
    frames = [_chunk({"role": "assistant", "content": ""}, None)]
    frames += [_chunk({"content": WORDS[i % len(WORDS)]}, None) for i in range(n - 2)]
    frames.append(_chunk({}, "stop"))
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": n - 2,
        "total_tokens": 12 + n - 2,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    frames.append(
        _frame(
            {
                "id": COMPLETION_ID,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "choices": [],
                "usage": usage,
            }
        )
    )
    frames.append(b"data: [DONE]\n\n")
    return frames


def make_handler(chunks: int, chunk_delay_ms: float):  # type: ignore[no-untyped-def]
    unary = completion_body()
    frames = stream_frames(chunks)
    sse_headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    json_headers = {"Content-Type": "application/json"}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(body=b"ok")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
            stream = body.get("stream") is True
            # A request may ask for its own pace by its model (bench/run.py paced_model).
            model = body.get("model")
            pause = chunk_delay_ms / 1000
            if isinstance(model, str) and model.startswith("paced-"):
                pause = float(model.removeprefix("paced-")) / 1000
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return web.Response(status=400, body=b'{"error":{"message":"bad json"}}')
        if not stream:
            return web.Response(body=unary, headers=json_headers)
        response = web.StreamResponse(headers=sse_headers)
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
            if pause:
                await asyncio.sleep(pause)
        await response.write_eof()
        return response

    return handler


async def serve(host: str, port: int, chunks: int, chunk_delay_ms: float) -> None:
    server = web.Server(make_handler(chunks, chunk_delay_ms), access_log=None)
    runner = web.ServerRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream on http://{host}:{port} pid {os.getpid()}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=50, help="chunks per stream (>= 2)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.host, args.port, args.chunks, args.chunk_delay_ms))


if __name__ == "__main__":
    main()
