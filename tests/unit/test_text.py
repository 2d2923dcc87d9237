"""Stop sequences, UTF-8 and the token stream of a request."""

from __future__ import annotations

import pytest

from app.inference.engine import Finished, TextDelta, TokenLogprob
from app.inference.text import StopMatcher, TokenStream, Utf8Stream


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_no_stops_passes_text_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("Hello") == ("Hello", False)


def test_stop_inside_one_piece_cuts_before_it() -> None:
    assert feed_all(StopMatcher(["\n"]), ["Paris.\nThe"]) == ("Paris.", True)


def test_stop_split_across_pieces_never_leaks_its_first_half() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("done E") == ("done ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("D and more") == ("", True)


def test_held_back_text_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("an E") == ("an ", False)
    assert matcher.feed("ND") == ("", True)
    matcher = StopMatcher(["END"])
    assert matcher.feed("an E") == ("an ", False)
    assert matcher.feed("nd") == ("End", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(["b", "a"]), ["xxab"]) == ("xx", True)


def test_unfinished_stop_prefix_is_flushed_at_the_end() -> None:
    assert feed_all(StopMatcher(["###"]), ["text #", "#"]) == ("text ##", False)


def test_empty_stop_strings_are_ignored() -> None:
    assert feed_all(StopMatcher(["", "x"]), ["abc"]) == ("abc", False)


def test_utf8_character_split_across_tokens_waits_for_its_rest() -> None:
    stream = Utf8Stream()
    euro = "€".encode()
    assert stream.feed(euro[:1]) == ""
    assert stream.feed(euro[1:]) == "€"
    assert stream.feed(b"!") == "!"


@pytest.mark.parametrize("text", ["é", "€", "😀"])
def test_a_character_cut_at_the_end_is_dropped_not_replaced(text: str) -> None:
    for cut in range(1, len(text.encode())):
        stream = Utf8Stream()
        assert stream.feed(b"ok " + text.encode()[:cut]) == "ok "
        assert stream.flush() == ""


def test_bytes_that_are_no_character_still_become_replacement_characters() -> None:
    stream = Utf8Stream()
    assert stream.feed(b"a\xff") == "a\ufffd"
    assert stream.feed(b"\x80") == "\ufffd"
    assert stream.flush() == ""


class _Grammar:
    constraining = False


def _stream(
    stops: tuple[str, ...] = (), max_tokens: int = 10, grammar: _Grammar | None = None
) -> tuple[TokenStream, list[object]]:
    events: list[object] = []
    stream = TokenStream(
        events.append,
        stops=stops,
        max_tokens=max_tokens,
        prompt_tokens=3,
        cached_tokens=1,
        grammar=grammar,
    )
    return stream, events


def _logprob(text: str) -> TokenLogprob:
    return TokenLogprob(token=text, bytes=tuple(text.encode()), logprob=-0.5)


def test_token_stream_ends_before_a_stop_split_across_tokens_and_drops_its_tokens() -> None:
    stream, events = _stream(stops=("END",))
    assert stream.push(b"hi E", _logprob("hi E")) is None
    assert stream.push(b"N", _logprob("N")) is None
    assert stream.push(b"D!", _logprob("D!")) == "stop"
    stream.finish("stop")
    assert events == [
        TextDelta("hi ", (_logprob("hi E"),), 1),  # the stop's tokens are not returned
        Finished(
            reason="stop",
            prompt_tokens=3,
            completion_tokens=3,
            stop_sequence="END",
            cached_tokens=1,
        ),
    ]


def test_token_stream_holds_a_split_character_and_ends_at_max_tokens() -> None:
    stream, events = _stream(max_tokens=2)
    assert stream.remaining == 2
    assert stream.push("é".encode()[:1], _logprob("?")) is None
    assert events == []  # half a character: nothing to show yet
    assert stream.push("é".encode()[1:] + b"!", _logprob("!")) == "length"
    assert stream.remaining == 0
    stream.finish("length")
    assert events[0] == TextDelta("é!", (_logprob("?"), _logprob("!")), 2)
    assert isinstance(events[1], Finished)
    assert events[1].completion_tokens == 2


def test_token_stream_under_a_constraining_grammar_ignores_stops_and_releases_held_text() -> None:
    grammar = _Grammar()
    stream, events = _stream(stops=("}",), grammar=grammar)
    stream.push(b"x}")  # free text: the stop applies
    stream.finish("stop")
    assert events[0] == TextDelta("x", (), 1)
    stream, events = _stream(stops=('"}',), grammar=grammar)
    assert stream.push(b'free "') is None  # the start of a stop sequence is held back
    assert events == [TextDelta("free ", (), 1)]
    grammar.constraining = True  # the grammar's opening was written: stops no longer apply
    assert stream.push(b'{"a": "') is None
    assert stream.push(b'"}') is None
    stream.finish("stop")
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == 'free "{"a": ""}'
