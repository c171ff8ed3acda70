"""Bounds on everything that becomes a grammar in the engine: JSON schemas of
`response_format` and of tool parameters.

llama.cpp turns a JSON schema into a grammar whose nesting grows with every repetition
bound (`maxItems`, `maxLength`, `{m,n}` in a pattern…); its grammar parser recurses once
per level and dies with SIGSEGV past a few thousand (measured with llama-cpp-python 0.3.36
and SmolLM2: `maxItems` 10,000 and `maxLength` 2,000 crash it, 1,000 does not), taking
every tenant's requests with it. So the gateway refuses, with a 400, any schema that is
too large, too deep, or repeats more than `MAX_REPEAT` times, before an engine sees it.
References must be local (`#/…`): the schema converter would fetch a remote one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from souverain.core.errors import InvalidRequestError

MAX_SCHEMA_BYTES = 16_384
MAX_DEPTH = 16
MAX_REPEAT = 256
MAX_KEYS = 256  # properties (or any mapping) in one object of the schema
MAX_LIST = 256  # enum values, anyOf branches, required names …
MAX_PATTERN = 256
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
