"""Local token counts (tiktoken's cl100k_base), as the admission estimate and usage fallback use them."""

from __future__ import annotations

from gateway import tokens


def test_counts_match_cl100k_base() -> None:
    # Figures of OpenAI's cookbook "How to count tokens with tiktoken" for cl100k_base.
    assert tokens.count_text("tiktoken is great!") == 6
    assert tokens.count_text("") == 0
    assert tokens.encoding().decode(tokens.encoding().encode("hello wörld")) == "hello wörld"
    # <|endoftext|> in user text is text, never the special token.
    assert tokens.count_text("<|endoftext|>") > 1


def test_chat_messages_add_the_per_message_overhead() -> None:
    one = tokens.count_messages([{"role": "user", "content": "tiktoken is great!"}])
    assert one == 6 + tokens.PER_MESSAGE + tokens.PER_REPLY
    named = tokens.count_messages([{"role": "user", "name": "ann", "content": "tiktoken is great!"}])
    assert named == one + 1


def test_the_encoding_keeps_no_python_copy_of_its_ranks() -> None:
    # The Rust core encodes from its own copy; the 100,256-entry dict beside it was 10 MB per process.
    enc = tokens.encoding()
    assert len(enc._mergeable_ranks) == 0
    assert enc.n_vocab == 100277
