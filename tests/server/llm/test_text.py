"""Incremental detokenisation never emits a broken UTF-8 character; stop strings are held back, never half-sent."""

from __future__ import annotations

from pathlib import Path

from lmaas.server.llm.text import Detokenizer, StopMatcher, TextCodec


def test_multibyte_character_split_across_tokens_is_emitted_whole(smollm2: Path) -> None:
    codec = TextCodec(smollm2)
    sample = "Crème brûlée 🍮 and 東京 — ok"
    ids = codec.encode(sample)
    # The case this guards: some token decodes alone to a replacement character (half of a multi-byte char).
    assert any("\ufffd" in codec.decode([t]) for t in ids)
    detok = Detokenizer(codec)
    deltas = [detok.push(t) for t in ids]
    assert "".join(deltas) == sample
    assert all("\ufffd" not in d for d in deltas)
    assert all(d.encode("utf-8").decode("utf-8") == d for d in deltas)


def test_stop_matcher_holds_back_a_possible_prefix() -> None:
    m = StopMatcher(["END", "\n\n"])
    assert m.feed("hello E") == ("hello", False)  # the longest stop minus one (2 chars) is held back
    assert m.feed("N") == (" ", False)
    assert m.feed("D tail") == ("", True)  # "END" arrived split over three pieces: none of it was sent


def test_stop_matcher_without_stops_passes_through() -> None:
    m = StopMatcher([])
    assert m.feed("abc") == ("abc", False)
    assert m.flush() == ""


def test_stop_matcher_flush_returns_the_held_text() -> None:
    m = StopMatcher(["xyz"])
    assert m.feed("abcx") == ("ab", False)
    assert m.flush() == "cx"
