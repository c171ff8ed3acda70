"""Bounds on everything that becomes a grammar in the engine: JSON schemas of
`response_format` and of tool parameters.

llama.cpp turns a JSON schema into a grammar whose nesting grows with every repetition
bound (`maxItems`, `maxLength`, `{m,n}` in a pattern…); its grammar parser recurses once
per level and dies with SIGSEGV past a few thousand (measured with llama-cpp-python 0.3.36
and SmolLM2: `maxItems` 10,000 and `maxLength` 2,000 crash it, 1,000 does not), taking
every tenant's requests with it. So the gateway refuses, with a 400, any schema that is
too large, too deep, or repeats more than `MAX_REPEAT` times, before an engine sees it.
References must be local (`#/…`): the schema converter would fetch a remote one; and
they must resolve, or the engine refuses the request after the gateway chose its slot.

Each repetition is bounded, and so is what repetitions nested in a pattern multiply to:
llama.cpp's converter writes a pattern's sub-expressions out inline, so `(a{0,100}){0,100}`
becomes ten thousand optional items, whose grammar then keeps every way of splitting the
text between the groups alive at every token (it held a shared 8-slot engine for 17 s; four
levels, over two minutes). A pattern's cost is the largest product of repetition counts
along one nesting path (`*`, `+` and `{m,}` weigh `UNBOUNDED_WEIGHT`), at most `MAX_REPEAT`.
"""

from __future__ import annotations

import json
import re
import re._constants as sre_constants
import re._parser as sre_parser
from typing import Any

from souverain.core.errors import InvalidRequestError

MAX_SCHEMA_BYTES = 16_384
MAX_DEPTH = 16
MAX_REPEAT = 256
MAX_KEYS = 256  # properties (or any mapping) in one object of the schema
MAX_LIST = 256  # enum values, anyOf branches, required names …
MAX_PATTERN = 256
UNBOUNDED_WEIGHT = 16  # `*`, `+`, `{m,}`: a recursive rule, as costly as a few copies
REPEAT_KEYWORDS = frozenset(
    {
        "maxItems",
        "minItems",
        "maxLength",
        "minLength",
        "maxProperties",
        "minProperties",
        "maxContains",
        "minContains",
    }
)
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def check_response_format(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in {
        "text",
        "json_object",
        "json_schema",
    }:
        raise InvalidRequestError(
            "response_format.type must be text, json_object or json_schema",
            param="response_format",
        )
    if value.get("schema") is not None:
        check_schema(value["schema"], "response_format.schema")
    inner = value.get("json_schema")
    if inner is not None:
        if not isinstance(inner, dict):
            raise InvalidRequestError(
                "response_format.json_schema must be an object", param="response_format"
            )
        check_schema(inner.get("schema", {}), "response_format.json_schema.schema")


def check_schema(schema: Any, where: str) -> None:
    """Refuse a schema the engine could not safely turn into a grammar."""
    try:
        size = len(json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{where} is not a JSON schema", param=where) from None
    if size > MAX_SCHEMA_BYTES:
        raise InvalidRequestError(
            f"{where} is {size} bytes; schemas may be at most {MAX_SCHEMA_BYTES}", param=where
        )
    _walk(schema, where, depth=0)
    _check_references(schema, schema, where)


def _walk(node: Any, where: str, *, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidRequestError(f"{where} nests deeper than {MAX_DEPTH} levels", param=where)
    if isinstance(node, list):
        if len(node) > MAX_LIST:
            raise InvalidRequestError(f"{where} has a list longer than {MAX_LIST}", param=where)
        for item in node:
            _walk(item, where, depth=depth + 1)
        return
    if not isinstance(node, dict):
        return
    if len(node) > MAX_KEYS:
        raise InvalidRequestError(
            f"{where} has an object with more than {MAX_KEYS} keys", param=where
        )
    for key, value in node.items():
        _check_keyword(key, value, where)
        _walk(value, where, depth=depth + 1)


def _check_keyword(key: str, value: Any, where: str) -> None:
    if key in REPEAT_KEYWORDS:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_REPEAT:
            raise InvalidRequestError(
                f"{where}: {key} must be an integer from 0 to {MAX_REPEAT}", param=where
            )
    elif key == "pattern" and isinstance(value, str):
        _check_pattern(value, where)
    elif key == "$ref" and (not isinstance(value, str) or not value.startswith("#")):
        raise InvalidRequestError(f"{where}: only local references (#/…) are allowed", param=where)


def _check_pattern(pattern: str, where: str) -> None:
    if len(pattern) > MAX_PATTERN:
        raise InvalidRequestError(
            f"{where}: patterns may be at most {MAX_PATTERN} characters", param=where
        )
    for low, high in _QUANTIFIER.findall(pattern):
        for bound in (low, high):
            if bound and int(bound) > MAX_REPEAT:
                raise InvalidRequestError(
                    f"{where}: repetition counts in patterns may be at most {MAX_REPEAT}",
                    param=where,
                )
    try:
        parsed = sre_parser.parse(pattern)
    except (re.error, OverflowError, RecursionError):
        raise InvalidRequestError(
            f"{where}: the pattern is not a regular expression", param=where
        ) from None
    cost = pattern_cost(parsed)
    if cost > MAX_REPEAT:
        raise InvalidRequestError(
            f"{where}: the pattern's nested repetitions multiply to {cost} (at most "
            f"{MAX_REPEAT}); write it without repeating a repeated group",
            param=where,
        )


_REPEATS = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT}


def pattern_cost(parsed: Any) -> int:
    """The largest product of repetition counts along one nesting path of a parsed
    pattern (`re._parser`'s tree): what the engine's grammar grows to."""
    worst = 1
    for op, arg in parsed:
        if op in _REPEATS:
            _low, high, inner = arg
            count = UNBOUNDED_WEIGHT if high == sre_constants.MAXREPEAT else max(1, high)
            worst = max(worst, count * pattern_cost(inner))
        elif op == sre_constants.BRANCH:
            worst = max([worst, *(pattern_cost(branch) for branch in arg[1])])
        elif op in (sre_constants.SUBPATTERN, sre_constants.ATOMIC_GROUP):
            worst = max(worst, pattern_cost(arg[-1]))
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            worst = max(worst, pattern_cost(arg[1]))
    return worst


def _check_references(node: Any, root: Any, where: str) -> None:
    """Every local `$ref` points at something in the schema (depth is bounded by `_walk`)."""
    if isinstance(node, list):
        for item in node:
            _check_references(item, root, where)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and _resolve(root, ref) is None:
        raise InvalidRequestError(
            f"{where}: the reference {ref[:64]!r} does not resolve", param=where
        )
    for value in node.values():
        _check_references(value, root, where)


def _resolve(root: Any, ref: str) -> Any:
    """What a local JSON pointer (`#/$defs/x`, RFC 6901) names, or None."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    found = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(found, dict) and part in found:
            found = found[part]
        elif isinstance(found, list) and part.isdigit() and int(part) < len(found):
            found = found[int(part)]
        else:
            return None
    return found
