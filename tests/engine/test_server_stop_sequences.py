"""StopMatcher: streamed text is cut exactly where the whole text would be, however split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inferos.engine.stop_sequences import StopMatcher


def _expected(text: str, stops: tuple[str, ...]) -> str:
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[:min(cuts)] if cuts else text


def _streamed(pieces: list[str], stops: tuple[str, ...]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.push(p) for p in pieces) + matcher.flush()
    return out, matcher.stopped


def test_stop_split_across_pieces_is_cut_and_not_sent() -> None:
    pieces = ["Paris is the", " capi", "tal.\nQ", "uestion: next"]
    out, stopped = _streamed(pieces, ("\nQuestion:",))
    assert out == "Paris is the capital."
    assert stopped


def test_text_that_only_looks_like_a_stop_start_is_released() -> None:
    out, stopped = _streamed(["a\n", "b"], ("\nQ",))
    assert out == "a\nb"
    assert not stopped


def test_earliest_of_several_stops_wins() -> None:
    out, _ = _streamed(["xx END yy STOP"], ("STOP", "END"))
    assert out == "xx "


@given(text=st.text(alphabet="abc\n", max_size=40),
       stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=10))
def test_any_split_gives_the_unsplit_result(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    out, stopped = _streamed(pieces, tuple(stops))
    assert out == _expected(text, tuple(stops))
    assert stopped == any(s in text for s in stops)
