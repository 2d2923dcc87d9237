"""A plain OpenAI API script: it runs against OpenAI or this service unchanged.

Point it at the service with the SDK's own variables, nothing else:

    OPENAI_BASE_URL=http://localhost:8002/v1 OPENAI_API_KEY=sk-... \\
        .venv/bin/python scripts/openai_example.py

OPENAI_MODEL picks the model (default tinyllama-1.1b).
"""

from __future__ import annotations

import json
import os

from openai import OpenAI

MODEL = os.environ.get("OPENAI_MODEL", "tinyllama-1.1b")
client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY

print("models:", [m.id for m in client.models.list().data], client.models.retrieve(MODEL).id)

chat = client.chat.completions.create(
    model=MODEL,
    messages=[
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three colours."},
    ],
    max_tokens=32,
    temperature=0.7,
    top_p=0.9,
    seed=42,
    stop=["\n\n"],
    presence_penalty=0.3,
    frequency_penalty=0.3,
    n=2,
    user="example-script",
)
for choice in chat.choices:
    print(f"chat[{choice.index}] ({choice.finish_reason}):", choice.message.content)
print("usage:", chat.usage)

print("stream: ", end="")
stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Count to five."}],
    max_completion_tokens=24,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    elif chunk.usage:
        print(f"\nstream usage: {chunk.usage}")

as_json = client.chat.completions.create(
    model=MODEL,
    messages=[
        {"role": "user", "content": 'Reply with a JSON object with one key "ok" set to true.'}
    ],
    max_tokens=64,
    temperature=0,
    response_format={"type": "json_object"},
)
print("json_object:", json.loads(as_json.choices[0].message.content or ""))

person = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Describe a person."}],
    max_tokens=64,
    response_format={
        "type": "json_schema",
        "json_schema": {
            "name": "person",
            "schema": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 20},
                    "age": {"type": "integer"},
                },
                "required": ["name", "age"],
                "additionalProperties": False,
            },
        },
    },
)
print("json_schema:", json.loads(person.choices[0].message.content or ""))

ranked = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Say yes."}],
    max_tokens=3,
    logprobs=True,
    top_logprobs=2,
)
for token in (ranked.choices[0].logprobs and ranked.choices[0].logprobs.content) or []:
    print(f"logprob {token.token!r}: {token.logprob:.3f}", [t.token for t in token.top_logprobs])

completion = client.completions.create(
    model=MODEL,
    prompt=["The capital of France is", "Once upon a time"],
    max_tokens=12,
    temperature=0,
    logprobs=1,
    logit_bias={"0": -100},
)
for done in completion.choices:
    print(f"completion[{done.index}] ({done.finish_reason}):", repr(done.text))
