"""The query service's parameter types take any text a client can send and answer a value or
a validation error (a 422), never another exception — and never a value PostgreSQL would
refuse (NUL, a scoped address)."""

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from audit_query.deps import Network, Text, When

PARSERS: dict[str, TypeAdapter[Any]] = {
    "text": TypeAdapter(Text),
    "network": TypeAdapter(Network),
    "when": TypeAdapter(When),
}


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(PARSERS)), st.text())
def test_every_parameter_parser_answers_a_value_or_a_validation_error(name: str, text: str) -> None:
    try:
        value = PARSERS[name].validate_python(text)
    except ValidationError:
        return
    if isinstance(value, str):
        assert "\x00" not in value
        assert name != "network" or "%" not in value  # no scoped IPv6 reaches inet
    if text == "":
        assert value is None  # a blank form field is no filter
