"""An OpenAI-style upstream that fails on purpose: a real HTTP/1.1 server on loopback, plain sockets.

Which fault a request gets is chosen by the ``model`` of its body, i.e. by the deployment's
``provider_model``, so one server serves every fault at once and concurrent requests never step
on each other's settings (FakeOpenAI's controls are global)::

    with FaultUpstream() as faults:
        Deployment.objects.create(..., provider=Provider(base_url=faults.base_url, ...),
                                  provider_model="reset_after:3")

Modes (``name`` or ``name:N``):

``silent``
    reads the request and never answers (first-byte timeout).
``headers_then_silent``
    sends ``200`` headers, then nothing (the first body chunk never comes).
``reset``
    reads the request and resets the connection (RST, ``SO_LINGER`` 0) before any byte.
``status:CODE`` / ``status:CODE:RETRY_AFTER``
    an OpenAI-shaped error of that status (``retry-after`` when given), then closes.
``stall_after:N`` / ``reset_after:N`` / ``trickle_after:N``
    a chat completion stream: ``N`` content events at once, then it stalls (never another byte),
    resets, or dribbles the rest of the stream one byte every :attr:`FaultUpstream.byte_interval`
    seconds (1 s by default: a slowloris upstream). Event ``i`` carries the content ``" w{i}"``;
    the stream never has a usage chunk, so the gateway counts what it relayed. Without
    ``"stream": true`` the same modes send the headers and the first ``N`` bytes of a JSON body.
``ok:N``
    a complete stream of ``N`` events with usage and ``[DONE]`` (or a complete JSON answer).

The connect timeout cannot be chosen per request (no request is ever read): :class:`FullBacklog`
is a loopback listener whose accept queue is full, so the kernel drops further SYNs and a connect
hangs until the client's connect timeout, exactly as towards an overloaded or filtered host.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

REST_EVENTS = 8  # events that follow the first N (what a trickle dribbles)


@dataclass(frozen=True)
class FaultRequest:
    """One request the fault server read: its fault mode and whether it asked for a stream."""

    mode: str
    stream: bool
    at: float


def chunk_event(i: int, model: str = "fault") -> bytes:
    """The ``i``-th content event of a fault stream (content ``" w{i}"``)."""
    delta: dict[str, Any] = {"content": f" w{i}"}
    if i == 0:
        delta = {"role": "assistant", **delta}
    payload = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _stream(n: int, model: str, complete: bool) -> list[bytes]:
    events = [chunk_event(i, model) for i in range(n)]
    if complete:
        usage = {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}
        events.append(
            b"data: "
            + json.dumps(
                {
                    "id": "chatcmpl-fault",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                },
                separators=(",", ":"),
            ).encode()  # fmt: skip
            + b"\n\n"
        )
        events.append(b"data: [DONE]\n\n")
    return events


def _json_answer(n: int, model: str) -> bytes:
    body = {
        "id": "chatcmpl-fault", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(f" w{i}" for i in range(n))},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n},
    }  # fmt: skip
    return json.dumps(body).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FaultUpstream:
    """The fault server on 127.0.0.1:<free port>, one thread per connection."""

    def __init__(self, byte_interval: float = 1.0) -> None:
        self.byte_interval = byte_interval
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._requests: list[FaultRequest] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        sock.settimeout(0.2)
        self._sock, self.port = sock, int(sock.getsockname()[1])
        self._stop.clear()
        thread = threading.Thread(target=self._accept, name=f"fault-upstream-{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop accepting, end every held connection, join the threads."""
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _close(conn)
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[FaultRequest]:
        with self._lock:
            return list(self._requests)

    def open_connections(self) -> int:
        """Connections still held (a stalled or trickling answer the client has not given up on)."""
        with self._lock:
            return len(self._conns)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    # ---- serving ------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self._conns.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():  # keep-alive: only `ok` answers leave the connection open
                request = _read_request(conn)
                if request is None:
                    return
                model = str(request.get("model") or "ok:1")
                stream = bool(request.get("stream"))
                with self._lock:
                    self._requests.append(FaultRequest(model, stream, time.time()))
                if not self._answer(conn, model, stream):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            _close(conn)

    def _answer(self, conn: socket.socket, mode: str, stream: bool) -> bool:
        """Serve one fault; True when the connection may serve another request."""
        name, _, arg = mode.partition(":")
        n = int(arg.split(":")[0]) if arg and arg.split(":")[0].isdigit() else 1
        if name == "silent":
            self._hold(conn)
            return False
        if name == "reset":
            _reset(conn)
            return False
        if name == "status":
            parts = arg.split(":")
            status, retry_after = int(parts[0]), (parts[1] if len(parts) > 1 else None)
            error = {"error": {"message": f"Injected fault: {status}.", "type": "server_error" if status >= 500
                               else "requests", "param": None, "code": None}}  # fmt: skip
            payload = json.dumps(error).encode()
            extra = f"retry-after: {retry_after}\r\n" if retry_after else ""
            conn.sendall(
                f"HTTP/1.1 {status} Fault\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                f"{extra}connection: close\r\n\r\n".encode()
                + payload
            )
            return False
        if name == "headers_then_silent":
            kind = "text/event-stream" if stream else "application/json"
            conn.sendall(
                f"HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
            )
            self._hold(conn)
            return False
        if name == "ok":
            if stream:
                data = b"".join(_chunk(e) for e in _stream(n, mode, complete=True)) + b"0\r\n\r\n"
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                             + data)  # fmt: skip
            else:
                payload = _json_answer(n, mode)
                conn.sendall(f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
                             .encode() + payload)  # fmt: skip
            return True
        if name not in ("stall_after", "reset_after", "trickle_after"):
            raise ValueError(f"unknown fault mode {mode!r}")
        if stream:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            for event in _stream(n, mode, complete=False):
                conn.sendall(_chunk(event))
            rest = b"".join(_stream(n + REST_EVENTS, mode, complete=True)[n:])

            def send_rest(byte: bytes) -> None:
                conn.sendall(_chunk(byte))

        else:
            payload = _json_answer(REST_EVENTS, mode)
            conn.sendall(f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
                         .encode() + payload[:n])  # fmt: skip
            rest = payload[n:]
            send_rest = conn.sendall  # type: ignore[assignment]
        if name == "stall_after":
            self._hold(conn)
        elif name == "reset_after":
            time.sleep(0.05)  # let the events leave before the RST discards unsent data
            _reset(conn)
        else:
            for i in range(len(rest)):
                if self._stop.wait(self.byte_interval) or _peer_closed(conn):
                    return False
                send_rest(rest[i : i + 1])
            if stream:
                conn.sendall(b"0\r\n\r\n")
        return False

    def _hold(self, conn: socket.socket) -> None:
        """Keep the connection open and silent until the client gives up or the server stops."""
        while not self._stop.is_set():
            if _peer_closed(conn, 0.2):
                return


def _read_request(conn: socket.socket) -> dict[str, Any] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(65536)
        if not part:
            return None
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        part = conn.recv(65536)
        if not part:
            return None
        body += part
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        parsed = {}
    return parsed if isinstance(parsed, dict) else {}


def _peer_closed(conn: socket.socket, wait: float = 0.0) -> bool:
    try:
        readable, _, _ = select.select([conn], [], [], wait)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


class FullBacklog:
    """A loopback port whose accept queue is full: a connect to it hangs (SYNs are dropped).

    ``listen(0)`` admits one connection that nobody accepts; fillers take that place, so the next
    SYN finds the queue full and Linux drops it (``ListenOverflows``), as an overloaded host does.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._fillers: list[socket.socket] = []
        self.port = 0

    def start(self) -> Self:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        self._sock, self.port = sock, int(sock.getsockname()[1])
        for _ in range(16):
            filler = socket.socket()
            filler.settimeout(0.3)
            try:
                filler.connect(("127.0.0.1", self.port))
            except TimeoutError:
                filler.close()
                return self  # this one hung: the queue is full
            self._fillers.append(filler)
        raise RuntimeError("the accept queue never filled up")

    def stop(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"
