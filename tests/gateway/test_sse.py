"""The stream meter forwards an SSE stream as it comes, finds its usage and can drop the usage chunk."""

from __future__ import annotations

import orjson
import pytest

from gateway.sse import StreamMeter, Usage


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def delta(text: str) -> bytes:
    return event(
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    )


USAGE = event({"id": "c", "object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
                         "prompt_tokens_details": {"cached_tokens": 4}}})  # fmt: skip
DONE = b"data: [DONE]\n\n"
STREAM = delta("Hel") + delta("lo") + USAGE + DONE


def run(meter: StreamMeter, chunks: list[bytes]) -> bytes:
    return b"".join(meter.feed(chunk) for chunk in chunks) + meter.finish()


def cuts(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 64, len(STREAM)])
def test_every_cut_of_the_stream_gives_the_same_bytes_and_usage(size: int) -> None:
    kept = StreamMeter(strip_usage_chunk=False)
    assert run(kept, cuts(STREAM, size)) == STREAM
    assert kept.usage == Usage(prompt_tokens=9, completion_tokens=2, cached_tokens=4) and kept.saw_done
    stripped = StreamMeter(strip_usage_chunk=True)
    assert run(stripped, cuts(STREAM, size)) == delta("Hel") + delta("lo") + DONE
    assert stripped.usage == kept.usage and stripped.saw_done


def test_openai_chunks_with_usage_null_go_through_and_the_last_one_is_the_usage() -> None:
    # With include_usage, OpenAI sends `"usage":null` in every chunk before the usage chunk.
    chunks = [event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}}],
                     "usage": None}) for w in ("Hel", "lo")]  # fmt: skip
    meter = StreamMeter(strip_usage_chunk=True)
    assert [meter.feed(chunk) for chunk in [*chunks, USAGE, DONE]] == [*chunks, b"", DONE]
    assert meter.usage == Usage(prompt_tokens=9, completion_tokens=2, cached_tokens=4)


def test_whole_events_go_through_at_once_and_only_a_partial_event_waits() -> None:
    meter = StreamMeter(strip_usage_chunk=True)
    first = delta("Hel") + delta("lo")
    assert meter.feed(first) == first  # whole events with no usage: through as they came
    assert meter.feed(USAGE[:20]) == b""  # a partial event that may be the usage chunk waits
    assert meter.feed(USAGE[20:] + DONE[:5]) == b""  # the usage chunk is dropped whole
    assert meter.feed(DONE[5:]) == DONE
    assert meter.usage is not None and meter.saw_done


def test_crlf_framing_comments_and_a_last_event_without_its_blank_line() -> None:
    stream = b": keep-alive\r\n\r\n" + delta("a").replace(b"\n", b"\r\n") + b"data: [DONE]"
    meter = StreamMeter(strip_usage_chunk=True)
    assert run(meter, cuts(stream, 5)) == stream
    assert meter.saw_done and meter.usage is None
    assert meter.completion_text() == "a"


def test_a_usage_chunk_with_choices_is_kept_even_when_stripping() -> None:
    both = event(
        {
            "choices": [{"index": 0, "delta": {"content": "x"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        }
    )
    meter = StreamMeter(strip_usage_chunk=True)
    assert run(meter, [both]) == both and meter.usage == Usage(1, 1, 0)


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_without_usage_the_text_of_every_kind_of_event_is_there_to_count(size: int) -> None:
    stream = (
        delta("Hello ")
        + event(
            {
                "choices": [
                    {"index": 0, "delta": {"tool_calls": [{"function": {"name": "get", "arguments": "{}"}}]}}
                ]
            }
        )
        + event({"choices": [{"index": 0, "text": "legacy "}]})
        + event({"type": "response.output_text.delta", "delta": "responses"})
        + b"data: {not json}\n\n"
        + event({"usage": None, "choices": []})
        + DONE
    )
    meter = StreamMeter(strip_usage_chunk=False)
    assert run(meter, cuts(stream, size)) == stream
    assert meter.usage is None
    assert meter.completion_text() == "Hello get{}legacy responses"
