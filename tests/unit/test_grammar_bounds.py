"""What a JSON schema may ask an engine to build: nested repetitions in patterns multiply,
and references must resolve (pure checks; the engine side is tests/faults/test_hostile_requests.py)."""

from __future__ import annotations

import re._parser as sre_parser
from typing import Any

import pytest

from souverain.core.errors import InvalidRequestError
from souverain.gateway.grammar_bounds import (
    UNBOUNDED_WEIGHT,
    check_schema,
    pattern_cost,
)


def _pattern(pattern: str) -> dict[str, Any]:
    return {"type": "string", "pattern": pattern}


class TestPatternCost:
    @pytest.mark.parametrize(
        ("pattern", "cost"),
        [
            ("^abc$", 1),
            ("^a{0,100}$", 100),
            ("^(a{0,100}){0,100}$", 10_000),
            ("^(a{0,16}){0,16}$", 256),
            ("^(ab|c{0,9}){0,9}$", 81),
            ("^a+$", UNBOUNDED_WEIGHT),
            ("^((a+)+)+$", UNBOUNDED_WEIGHT**3),
            ("^a{3}b{0,7}$", 7),  # side by side: the larger, not the product
            ("^(?=(a{0,9}){0,9})b$", 81),  # inside an assertion too
        ],
    )
    def test_the_largest_product_along_one_nesting_path(self, pattern: str, cost: int) -> None:
        assert pattern_cost(sre_parser.parse(pattern)) == cost


class TestCheckSchema:
    @pytest.mark.parametrize(
        "pattern",
        [
            "^(a{0,100}){0,100}$",
            "^(((a{0,10}){0,10}){0,10}){0,10}$",
            "^((a+)+)+$",
            "^(x{0,17}){0,16}$",
            # a repeated group of a variable count: 63 × 16, refused though unambiguous
            # here (the check does not prove ambiguity); `^[a-z0-9.]{1,253}$` says the same
            "^[a-z0-9]{1,63}(\\.[a-z0-9]{1,63})*$",
        ],
    )
    def test_nested_repetitions_beyond_the_bound_are_refused(self, pattern: str) -> None:
        with pytest.raises(InvalidRequestError, match="multiply to"):
            check_schema(_pattern(pattern), "response_format")

    @pytest.mark.parametrize(
        "pattern",
        ["^([a-z0-9]+\\.)+[a-z]{2,}$", "^\\d{4}-\\d{2}-\\d{2}$", "^(a{0,16}){0,16}$"],
    )
    def test_ordinary_patterns_pass(self, pattern: str) -> None:
        check_schema(_pattern(pattern), "response_format")

    def test_a_pattern_that_is_not_a_regular_expression_is_refused(self) -> None:
        with pytest.raises(InvalidRequestError, match="not a regular expression"):
            check_schema(_pattern("^(a$"), "p")

    @pytest.mark.parametrize(
        "ref", ["#/$defs/missing", "#/$defs/there/properties/nope", "#/items/3", "#x"]
    )
    def test_references_that_do_not_resolve_are_refused(self, ref: str) -> None:
        schema = {
            "$defs": {"there": {"type": "object", "properties": {}}},
            "items": [{}],
            "$ref": ref,
        }
        with pytest.raises(InvalidRequestError, match="does not resolve"):
            check_schema(schema, "p")

    @pytest.mark.parametrize("ref", ["#", "#/$defs/there", "#/$defs/a~1b", "#/items/0"])
    def test_references_that_resolve_pass(self, ref: str) -> None:
        schema = {"$defs": {"there": {"type": "string"}, "a/b": {}}, "items": [{}], "$ref": ref}
        check_schema(schema, "p")
