"""Reading msgspec's validation messages, once for settings, models file, CLI and API errors."""

from __future__ import annotations

import msgspec
import pytest

from app.validation import describe, field_path, located


class Item(msgspec.Struct):
    id: int


class Doc(msgspec.Struct):
    items: list[Item]
    tags: dict[str, int] = {}


@pytest.mark.parametrize(
    ("data", "path", "detail"),
    [
        ({"items": [{"id": "x"}]}, "items[0].id", "Expected `int`, got `str`"),
        ({"items": [{}]}, "items[0].id", "Object missing required field `id`"),
        ({}, "items", "Object missing required field `items`"),
        ({"items": [], "tags": {"a": "b"}}, "tags", "Expected `int`, got `str`"),
        ([], None, "Expected `object`, got `array`"),
    ],
)
def test_a_message_is_read_as_the_field_and_what_is_wrong(
    data: object, path: str | None, detail: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(data, Doc)
    assert located(str(caught.value)) == (path, detail)
    assert describe(caught.value) == (f"{path}: {detail}" if path else detail)


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("$.stop[5]", "stop[5]"),
        ("data.messages[0].role", "messages[0].role"),
        ("logit_bias[...]", "logit_bias"),
        ("$", None),
        ("data", None),
        (None, None),
        ("", None),
    ],
)
def test_a_location_given_apart_names_the_field_a_client_can_fix(
    key: str | None, path: str | None
) -> None:
    assert field_path(key) == path
    assert located("Expected `int`, got `str`", key)[0] == path
