"""Text to token ids, telling the chat template's own markers from what users wrote.

llama.cpp can tokenize a string either with every control-token text in it parsed as a control
token, or with none. A rendered chat prompt needs both: ``<|im_start|>`` written by the template
is a control token, the same characters typed by a user are text (OpenAI treats them so; parsing
them would let a user forge a system turn). And llama.cpp's own parsing costs time in the square
of the number of control tokens in the text, which a chat of many empty messages exploits.

So this module splits the text itself: control-token texts are found in the trusted parts only,
with one regular-expression pass (linear time), and each stretch of text between two control
tokens is given to llama.cpp with control-token parsing off. That is exactly how llama.cpp
tokenizes a string with parsing on (it, too, splits at control tokens and tokenizes each stretch
on its own), minus the parsing inside untrusted text. Work stops between stretches when the
request's client is gone.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import llama_cpp


class Fragment(NamedTuple):
    """A piece of a prompt: ``trusted`` text may contain control tokens, other text never."""

    text: str
    trusted: bool


class Cancelled(Exception):
    """Tokenizing stopped because nobody waits for the result any more."""


_SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN


class Tokenizer:
    """Tokenizes with a model's vocabulary; safe to use from several threads."""

    def __init__(self, model: Any) -> None:
        self._model = model
        vocab = model.vocab
        self._bos = int(model.token_bos())
        self._eos = int(model.token_eos())
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab)) and self._bos >= 0
        self._add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab)) and self._eos >= 0
        self._control: dict[str, int] = {}
        self._lstrip: set[int] = set()
        self._rstrip: set[int] = set()
        for token in range(int(model.n_vocab())):
            attr = int(llama_cpp.llama_vocab_get_attr(vocab, token))
            if not attr & _SPECIAL:
                continue
            text = model.token_get_text(token)
            if text and text not in self._control:
                self._control[text] = token
                if attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP:
                    self._lstrip.add(token)
                if attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP:
                    self._rstrip.add(token)
        # Longest first, as llama.cpp tries them.
        names = sorted(self._control, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, names))) if names else None

    @property
    def bos_text(self) -> str:
        """The BOS token's text ('' if the model has none)."""
        return str(self._model.token_get_text(self._bos)) if self._bos >= 0 else ""

    @property
    def eos_text(self) -> str:
        """The EOS token's text ('' if the model has none)."""
        return str(self._model.token_get_text(self._eos)) if self._eos >= 0 else ""

    def encode(
        self,
        fragments: Iterable[Fragment],
        *,
        add_special: bool = True,
        cancelled: threading.Event | None = None,
    ) -> list[int]:
        """The tokens of the fragments joined; ``add_special``: BOS (unless the text starts
        with it) and EOS where the model wants them. Raises ``Cancelled`` once ``cancelled``
        is set."""
        pieces = self._split(fragments)
        tokens: list[int] = []
        for piece in pieces:
            if cancelled is not None and cancelled.is_set():
                raise Cancelled()
            if isinstance(piece, int):
                tokens.append(piece)
            elif piece:
                tokens.extend(self._model.tokenize(piece.encode("utf-8"), False, False))
        if add_special:
            if self._add_bos and (not tokens or tokens[0] != self._bos):
                tokens.insert(0, self._bos)
            if self._add_eos and (not tokens or tokens[-1] != self._eos):
                tokens.append(self._eos)
        return tokens

    def spells_control_token(self, text: str) -> bool:
        """Whether ``text`` contains the text of one of the model's control tokens."""
        return self._pattern is not None and self._pattern.search(text) is not None

    def encode_text(self, text: str, *, add_special: bool = True) -> list[int]:
        """``text`` with its control-token texts parsed (the caller wrote the whole prompt)."""
        return self.encode([Fragment(text, trusted=True)], add_special=add_special)

    def _split(self, fragments: Iterable[Fragment]) -> list[str | int]:
        """Stretches of text and control-token ids, alternating as llama.cpp splits them."""
        pieces: list[str | int] = []
        text: list[str] = []  # the stretch being gathered, joined once it ends

        def control(token: int) -> None:
            stretch = "".join(text)
            pieces.append(stretch.rstrip() if token in self._lstrip else stretch)
            pieces.append(token)
            text.clear()

        for fragment in fragments:
            if not fragment.trusted or self._pattern is None:
                text.append(fragment.text)
                continue
            start = 0
            for match in self._pattern.finditer(fragment.text):
                text.append(fragment.text[start : match.start()])
                control(self._control[match.group()])
                start = match.end()
            text.append(fragment.text[start:])
        pieces.append("".join(text))
        # A token with the RSTRIP attribute eats the whitespace after it.
        for i in range(len(pieces) - 1):
            token, following = pieces[i], pieces[i + 1]
            if isinstance(token, int) and token in self._rstrip and isinstance(following, str):
                pieces[i + 1] = following.lstrip()
        return pieces

    def decode(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``; bytes that are not UTF-8 become U+FFFD."""
        text: bytes = self._model.detokenize(list(tokens))
        return text.decode("utf-8", errors="replace")
