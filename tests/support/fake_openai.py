"""A local OpenAI-compatible chat server for tests (no internet here): a real
HTTP server in a thread that can also answer the ways real providers fail."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """Answers POST /v1/chat/completions by the last message's content:
    "malformed" → 200 with a body that is not JSON; "badshape" → JSON without
    choices; "slowdown" → 429; "broken" → 500; "echoauth" → 401 whose body echoes
    the request's Authorization header (as some providers and proxies do); anything
    else → a completion that echoes the content, with usage from the word counts."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                owner.requests.append({"path": self.path, "headers": dict(self.headers), **body})
                content = body["messages"][-1]["content"]
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}')
                elif content == "malformed":
                    self._send(200, b"<html>gateway says hi")
                elif content == "badshape":
                    self._send(200, b'{"id": "x", "object": "chat.completion"}')
                elif content == "slowdown":
                    self._send(429, b'{"error": {"message": "rate limit"}}')
                elif content == "echoauth":
                    said = f"invalid header Authorization: {self.headers['Authorization']}"
                    self._send(401, json.dumps({"error": {"message": said}}).encode())
                elif content == "broken":
                    self._send(500, b'{"error": {"message": "boom"}}')
                else:
                    words = sum(len(m["content"].split()) for m in body["messages"])
                    reply = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": f"echo: {content}"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": words, "completion_tokens": 2},
                    }
                    self._send(200, json.dumps(reply).encode())

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
