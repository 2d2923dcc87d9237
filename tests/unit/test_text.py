"""Stop sequences and UTF-8 in streamed text."""

from __future__ import annotations

import pytest

from app.inference.text import StopMatcher, Utf8Stream


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
