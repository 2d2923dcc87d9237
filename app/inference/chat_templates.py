"""Chat templates: a model's Jinja template rendered in a sandbox as Hugging Face renders it (or
llama.cpp's built-in template for its architecture), with tools, and with what the users wrote
told apart from what the template wrote.

The template renders the messages into one prompt string. To tokenize the users' text as text
(see ``tokenizer``), the renderer needs to know where each message's content lies in that string.
It renders the conversation twice, once with each content replaced by a unique marker, once as
it is; wherever a marker appears, the content (as is, or trimmed, for templates that trim) must
give back the real rendering exactly. Templates that do something else with the content (split
it, rewrite it) fall back to finding each content in the real rendering in order.

Tools go to templates that know a tool-call format as Hugging Face's ``apply_chat_template(...,
tools=...)`` passes them; other templates get the generic format: a system note and calls written
as a JSON envelope in the assistant's turns (``tool_calls``).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import jinja2
import llama_cpp
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.errors import InvalidRequest
from app.inference.engine import ChatMessage
from app.inference.tokenizer import Fragment
from app.inference.tool_formats import GENERIC, ToolFormat, ToolSpec, detect

logger = logging.getLogger(__name__)

# Chat formats for GGUFs that carry no template of their own (and llama.cpp has none for).
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

# llama.cpp's built-in templates for architectures whose GGUFs may come without one.
_BUILTIN_BY_ARCHITECTURE = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "phi3": "phi3",
    "chatglm": "chatglm4",
    "command-r": "command-r",
    "cohere2": "command-r",
    "exaone": "exaone3",
    "granite": "granite",
    "deepseek2": "deepseek2",
    "rwkv7": "rwkv-world",
}

Render = Callable[[list[dict[str, Any]], bool, dict[str, Any]], str]


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
    """One model's chat template, ready to render conversations."""

    def __init__(
        self, render: Render, *, tool_format: ToolFormat = GENERIC, name: str = "jinja"
    ) -> None:
        self._render_turns = render
        self.tool_format = tool_format
        self.name = name
        self._warned = False

    @classmethod
    def jinja(cls, source: str, *, bos_token: str, eos_token: str) -> ChatTemplate:
        """A Jinja template, as GGUFs and Hugging Face carry them."""
        template = _environment().from_string(source)
        tokens = {"bos_token": bos_token, "eos_token": eos_token}

        def render(turns: list[dict[str, Any]], prompt: bool, extra: dict[str, Any]) -> str:
            return str(
                template.render(messages=turns, add_generation_prompt=prompt, **tokens, **extra)
            )

        return cls(render, tool_format=detect(source))

    @classmethod
    def builtin(cls, name: str) -> ChatTemplate:
        """One of llama.cpp's built-in templates, by name (``gemma``, ``phi3``...)."""

        def render(turns: list[dict[str, Any]], prompt: bool, _: dict[str, Any]) -> str:
            return _apply_builtin(name, turns, prompt)

        return cls(render, name=name)

    @classmethod
    def for_model(
        cls,
        metadata: dict[str, str],
        *,
        override: str | None,
        fallback: str,
        bos_token: str,
        eos_token: str,
    ) -> ChatTemplate:
        """The template a model is served with: ``override`` (configured per model), else the
        GGUF's own, else llama.cpp's built-in one for its architecture, else ``fallback``."""
        source = override or metadata.get("tokenizer.chat_template")
        if source:
            return cls.jinja(source, bos_token=bos_token, eos_token=eos_token)
        architecture = metadata.get("general.architecture", "")
        builtin = _BUILTIN_BY_ARCHITECTURE.get(architecture)
        if builtin is not None:
            logger.info("the model has no chat template; using llama.cpp's %r", builtin)
            return cls.builtin(builtin)
        logger.info("the model has no chat template; using the %s format", fallback)
        return cls.jinja(
            FALLBACK_CHAT_TEMPLATES[fallback], bos_token=bos_token, eos_token=eos_token
        )

    def render(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        tool_required: bool = False,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt as one string; raises ``InvalidRequest`` when the template refuses."""
        turns, extra = self._turns(messages, tools, tool_required)
        return self._render(turns, add_generation_prompt, extra)

    def fragments(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        tool_required: bool = False,
        add_generation_prompt: bool = True,
    ) -> list[Fragment]:
        """The prompt with each message's content marked untrusted."""
        turns, extra = self._turns(messages, tools, tool_required)
        real = self._render(turns, add_generation_prompt, extra)
        nonce = secrets.token_hex(8)
        contents = [turn["content"] for turn in turns]
        marked = self._render(
            [
                {**turn, "content": f"\ue000{nonce}:{i}\ue001"}
                if isinstance(turn["content"], str)
                else turn
                for i, turn in enumerate(turns)
            ],
            add_generation_prompt,
            extra,
        )
        split = re.compile(f"\ue000{nonce}:(\\d+)\ue001")
        transforms: tuple[Callable[[str], str], ...] = (lambda c: c, str.strip)
        for transform in transforms:
            texts = [transform(c) if isinstance(c, str) else "" for c in contents]
            fragments = _substituted(marked, split, texts)
            if "".join(f.text for f in fragments) == real:
                return fragments
        return self._found_in_order(real, [c for c in contents if isinstance(c, str)])

    def _turns(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], tool_required: bool
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages as the template sees them, and what else it gets (``tools``)."""
        if self.tool_format.native:
            extra = {"tools": [_tool_dict(t) for t in tools]} if tools else {}
            return [_native_turn(m) for m in messages], extra
        return _generic_turns(messages, tools, tool_required, self.tool_format), {}

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

    def _render(
        self, turns: list[dict[str, Any]], add_generation_prompt: bool, extra: dict[str, Any]
    ) -> str:
        try:
            return self._render_turns(turns, add_generation_prompt, extra)
        except (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise InvalidRequest(
                f"The model's chat template refused these messages: {exc}", param="messages"
            ) from None


def _tool_dict(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _native_turn(message: ChatMessage) -> dict[str, Any]:
    """A message as Hugging Face templates expect it (arguments as objects, not JSON text)."""
    turn: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        turn["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.loads(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        turn["name"] = message.name
    return turn


def _generic_turns(
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec],
    tool_required: bool,
    tool_format: ToolFormat,
) -> list[dict[str, Any]]:
    """Messages for a template that knows no tools: the tools in a system note, calls written
    as the model writes them, results as the user's turn."""
    turns: list[dict[str, Any]] = []
    names = {call.id: call.name for m in messages for call in m.tool_calls}
    for message in messages:
        if message.role == "tool":
            name = message.name or names.get(message.tool_call_id or "", "the function")
            result = f"Result of {name}: {message.content or ''}"
            if turns and turns[-1]["role"] == "user" and turns[-1].get("results"):
                turns[-1]["content"] += "\n" + result  # results of one turn's calls together
            else:
                turns.append({"role": "user", "content": result, "results": True})
            continue
        content = message.content or ""
        if message.tool_calls:
            written = tool_format.written([(c.name, c.arguments) for c in message.tool_calls])
            content = f"{content}\n{written}" if content else written
        turns.append({"role": message.role, "content": content})
    for turn in turns:
        turn.pop("results", None)
    if tools:
        note = tool_format.note(tools, required=tool_required)
        if turns and turns[0]["role"] == "system":
            turns[0]["content"] = f"{turns[0]['content']}\n\n{note}"
        else:
            turns.insert(0, {"role": "system", "content": note})
    return turns


def _substituted(marked: str, split: re.Pattern[str], contents: list[str]) -> list[Fragment]:
    fragments, cursor = [], 0
    for match in split.finditer(marked):
        fragments.append(Fragment(marked[cursor : match.start()], True))
        fragments.append(Fragment(contents[int(match.group(1))], False))
        cursor = match.end()
    fragments.append(Fragment(marked[cursor:], True))
    return fragments


def _apply_builtin(name: str, turns: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """Renders with llama.cpp's built-in template ``name`` (its C++ implementation)."""
    roles = [str(turn["role"]).encode() for turn in turns]
    contents = [str(turn["content"] or "").encode() for turn in turns]
    pairs = list(zip(roles, contents, strict=True))
    chat = (llama_cpp.llama_chat_message * len(turns))(
        *(llama_cpp.llama_chat_message(role=r, content=c) for r, c in pairs)
    )
    size = 2 * sum(len(r) + len(c) for r, c in pairs) + 1024
    while True:
        buffer = ctypes.create_string_buffer(size)
        written = llama_cpp.llama_chat_apply_template(
            name.encode(), chat, len(turns), add_generation_prompt, buffer, size
        )
        if written < 0:
            raise ValueError(f"llama.cpp's {name!r} template refused the conversation")
        if written <= size:
            return buffer.raw[:written].decode("utf-8", errors="replace")
        size = written + 1
