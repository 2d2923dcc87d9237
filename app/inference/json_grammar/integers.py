"""Integer ranges as GBNF: the JSON integers from a lower to an upper bound (either open),
written digit by digit so that a grammar enforces ``minimum`` and ``maximum``."""

from __future__ import annotations

import re

from app.inference.json_grammar.gbnf import MAX_DIGITS, group


def _digits(count: int) -> str:
    return "[0-9]" if count == 1 else f"[0-9]{{{count}}}"


def _lead(head: str, first: int, last: int) -> str:
    """The digits ``head`` then one digit from ``first`` to ``last``."""
    if first == last:
        return f'"{head}{first}"'
    return f'"{head}" [{first}-{last}]' if head else f"[{first}-{last}]"


def _same_width(low: str, high: str) -> list[str]:
    """Alternatives matching the digit strings from ``low`` to ``high``, both of one width."""
    if low == high:
        return [f'"{low}"']
    common = 0
    while low[common] == high[common]:
        common += 1
    head = low[:common]
    rest = len(low) - common - 1
    first, last = int(low[common]), int(high[common])
    if rest == 0:
        return [_lead(head, first, last)]
    out: list[str] = []
    if low[common + 1 :] != "0" * rest:
        inner = group(_same_width(low[common + 1 :], "9" * rest))
        out.append(_cat(f'"{head}{first}"', inner))
        first += 1
    upper = None
    if high[common + 1 :] != "9" * rest:
        inner = group(_same_width("0" * rest, high[common + 1 :]))
        upper = _cat(f'"{head}{last}"', inner)
        last -= 1
    if first <= last:
        out.append(f"{_lead(head, first, last)} {_digits(rest)}")
    if upper is not None:
        out.append(upper)
    return out


def _cat(literal: str, rest: str) -> str:
    """``literal`` (of digits) then ``rest``, as one literal where ``rest`` is one too."""
    if re.fullmatch(r'"[0-9]*"', rest):
        return literal[:-1] + rest[1:]
    return f"{literal} {rest}"


def _positive(low: int, high: int | None) -> list[str]:
    """Alternatives matching the integers from ``low`` (at least 1) to ``high`` (None: to
    ``MAX_DIGITS`` digits, or as many as ``low`` has)."""
    width = len(str(low))
    if high is None:
        out = _same_width(str(low), "9" * width)
        longest = max(MAX_DIGITS, width)
        if longest > width:
            out.append(f"[1-9] [0-9]{{{width},{longest - 1}}}")
        return out
    out = []
    for digits in range(width, len(str(high)) + 1):
        first = max(low, 10 ** (digits - 1))
        last = min(high, 10**digits - 1)
        out.extend(_same_width(str(first), str(last)))
    return out


def int_range(low: int | None, high: int | None) -> list[str]:
    """Alternatives matching the JSON integers from ``low`` to ``high`` (None: unbounded)."""
    out: list[str] = []
    if low is None or low < 0:
        magnitudes = _positive(
            1 if high is None or high >= 0 else -high, None if low is None else -low
        )
        out.append(f'"-" {group(magnitudes)}')
    if (low is None or low <= 0) and (high is None or high >= 0):
        out.append('"0"')
    if high is None or high > 0:
        out.extend(_positive(1 if low is None or low < 1 else low, high))
    return out
