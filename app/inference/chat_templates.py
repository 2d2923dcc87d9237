"""Chat templates: a model's Jinja template, rendered in a sandbox as Hugging Face renders it,
with what the users wrote told apart from what the template wrote.

The template renders the messages into one prompt string. To tokenize the users' text as text
(see ``tokenizer``), the renderer needs to know where each message's content lies in that string.
It renders the conversation twice, once with each content replaced by a unique marker, once as
it is; wherever a marker appears, the content (as is, or trimmed, for templates that trim) must
give back the real rendering exactly. Templates that do something else with the content (split
it, rewrite it) fall back to finding each content in the real rendering in order.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.errors import InvalidRequest
from app.inference.engine import ChatMessage
from app.inference.tokenizer import Fragment

logger = logging.getLogger(__name__)

# Chat formats for GGUFs that carry no template of their own.
FALLBACK_CHAT_TEMPLATES = {
    # TinyLlama-1.1B-Chat's format.
    "zephyr": (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}


def _raise(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    # Hugging Face's tojson: no ASCII escaping, optional indent (Jinja's own one escapes HTML).
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """One model's chat template, compiled once."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        self.source = source
        self._template = _environment().from_string(source)
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}
        self._warned = False

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """The prompt as one string; raises ``InvalidRequest`` when the template refuses."""
        return self._render(
            [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt
        )

    def fragments(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> list[Fragment]:
        """The prompt with each message's content marked untrusted."""
        turns = [{"role": m.role, "content": m.content} for m in messages]
        real = self._render(turns, add_generation_prompt)
        nonce = secrets.token_hex(8)
        markers = [f"\ue000{nonce}:{i}\ue001" for i in range(len(turns))]
        marked = self._render(
            [{**turn, "content": marker} for turn, marker in zip(turns, markers, strict=True)],
            add_generation_prompt,
        )
        contents = [m.content for m in messages]
        split = re.compile(f"\ue000{nonce}:(\\d+)\ue001")
        transforms: tuple[Callable[[str], str], ...] = (lambda c: c, str.strip)
        for transform in transforms:
            fragments = _substituted(marked, split, [transform(c) for c in contents])
            if "".join(f.text for f in fragments) == real:
                return fragments
        return self._found_in_order(real, contents)

    def _found_in_order(self, real: str, contents: list[str]) -> list[Fragment]:
        if not self._warned:
            self._warned = True
            logger.warning(
                "this model's chat template rewrites message contents; user text is located in "
                "the rendered prompt by search"
            )
        fragments, cursor = [], 0
        for content in contents:
            at = real.find(content, cursor) if content else -1
            if at < 0:
                continue
            fragments += [Fragment(real[cursor:at], True), Fragment(content, False)]
            cursor = at + len(content)
        fragments.append(Fragment(real[cursor:], True))
        return fragments

    def _render(self, turns: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        try:
            return str(
                self._template.render(
                    messages=turns, add_generation_prompt=add_generation_prompt, **self._tokens
                )
            )
        except (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise InvalidRequest(
                f"The model's chat template refused these messages: {exc}", param="messages"
            ) from None


def _substituted(marked: str, split: re.Pattern[str], contents: list[str]) -> list[Fragment]:
    fragments, cursor = [], 0
    for match in split.finditer(marked):
        fragments.append(Fragment(marked[cursor : match.start()], True))
        fragments.append(Fragment(contents[int(match.group(1))], False))
        cursor = match.end()
    fragments.append(Fragment(marked[cursor:], True))
    return fragments
