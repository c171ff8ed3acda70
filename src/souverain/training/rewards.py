"""Rewards of reinforcement fine-tuning: the Magistral preset and OpenAI's graders.

Magistral (Mistral AI, "Magistral", 2025), section 2.2, in our words:

    format     exactly one `<think>…</think>` block, first, then an answer; for math the
               answer holds a `\\boxed{}`. If not: reward 0, and nothing else is checked.
               If so: +0.1.
    correct    the last `\\boxed{}` of the answer equals the reference, checked by a math
               verifier (math-verify: parses LaTeX and plain numbers, compares with SymPy):
               +0.9.
    length     soft penalty: 0 up to l_max - l_cache tokens, then linearly down to -0.1 at
               l_max (and -0.1 beyond).
    language   prompt, thinking and answer in one language (core/language.py, which takes
               LaTeX and code out first): +0.1.

OpenAI's graders, on the answer (the text after the thinking, as `sample.output_text`):
`string_check` (eq, ne, like, ilike), `text_similarity` (fuzzy_match), and `multi` (named
graders combined by an arithmetic formula, evaluated without `eval`). A `python` grader
would run the tenant's code on the platform, and is refused before any job is created.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from souverain.core import language

FORMAT_REWARD = 0.1
CORRECT_REWARD = 0.9
LANGUAGE_REWARD = 0.1
LENGTH_PENALTY = 0.1

_THINK = re.compile(r"\A\s*<think>(.*?)</think>(.*)\Z", re.S)
_TEMPLATE = re.compile(r"\{\{\s*([a-z_]+)\.([A-Za-z0-9_.]+)\s*\}\}")


class GraderError(ValueError):
    """A grader definition that cannot be used; the message says why (for a 400)."""


@dataclass(frozen=True)
class Scored:
    reward: float
    formatted: bool
    correct: bool
    consistent: bool | None  # None: the languages could not all be told
    prompt_language: str | None = None
    length_penalty: float = 0.0


def split_thinking(text: str) -> tuple[str, str] | None:
    """(thinking, answer) when the text is one think block and then an answer; else None."""
    match = _THINK.match(text)
    if match is None:
        return None
    thinking, answer = match.group(1), match.group(2)
    if "<think>" in thinking or "<think>" in answer or "</think>" in answer:
        return None
    if not thinking.strip() or not answer.strip():
        return None
    return thinking, answer


def last_boxed(text: str) -> str | None:
    """The contents of the last `\\boxed{…}` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def verify(answer: str, reference: str) -> bool:
    """Whether `answer` (LaTeX or plain) equals `reference`, by math-verify."""
    from math_verify import parse
    from math_verify import verify as math_verify

    gold = parse(f"${reference}$") or parse(reference)
    given = parse(f"${answer}$") or parse(answer)
    if not gold or not given:
        return answer.strip() == reference.strip()
    try:
        return bool(math_verify(gold, given))
    except Exception:  # a verifier timeout or an expression SymPy cannot take
        return answer.strip() == reference.strip()


def length_penalty(tokens: int, *, l_max: int, l_cache: int) -> float:
    free = l_max - l_cache
    if tokens <= free:
        return 0.0
    if tokens >= l_max:
        return -LENGTH_PENALTY
    return -LENGTH_PENALTY * (tokens - free) / l_cache


def magistral(
    completion: str,
    *,
    prompt: str,
    reference: str,
    tokens: int,
    l_max: int,
    l_cache: int,
    math: bool = True,
) -> Scored:
    parts = split_thinking(completion)
    boxed = last_boxed(parts[1]) if parts is not None else None
    if parts is None or (math and boxed is None):
        return Scored(0.0, formatted=False, correct=False, consistent=None)
    thinking, answer = parts
    correct = boxed is not None and verify(boxed, reference)
    said = (language.identify(prompt), language.identify(thinking), language.identify(answer))
    consistent = language.agree(*said) if None not in said else None
    penalty = length_penalty(tokens, l_max=l_max, l_cache=l_cache)
    reward = (
        FORMAT_REWARD
        + (CORRECT_REWARD if correct else 0.0)
        + penalty
        + (LANGUAGE_REWARD if consistent else 0.0)
    )
    return Scored(reward, True, correct, consistent, said[0], penalty)


# -- OpenAI's graders -------------------------------------------------------------------

Grader = Callable[[str, Mapping[str, Any]], float]  # (answer text, item) -> score
REFUSED = {
    "python": "Python graders would run your code on the platform, which souverain never "
    "does; use string_check, text_similarity, multi or the magistral preset.",
    "score_model": "Model graders are not available yet; use string_check, text_similarity, "
    "multi or the magistral preset.",
    "label_model": "Model graders are not available yet; use string_check, text_similarity, "
    "multi or the magistral preset.",
}
MAX_GRADERS = 16
MAX_COMPARED = 4000  # characters text_similarity compares (difflib is quadratic)
FIELDS = {
    "magistral": {"type", "name", "l_max", "l_cache"},
    "string_check": {"type", "name", "input", "reference", "operation"},
    "text_similarity": {"type", "name", "input", "reference", "evaluation_metric",
                        "pass_threshold"},
    "multi": {"type", "name", "graders", "calculate_output"},
}  # fmt: skip
MAX_FORMULA = 500


def check_grader(spec: Any, *, depth: int = 0) -> None:
    """Raise GraderError unless `spec` is a grader this platform runs."""
    if not isinstance(spec, dict):
        raise GraderError("grader must be an object")
    kind = spec.get("type")
    if kind in REFUSED:
        raise GraderError(REFUSED[kind])
    unknown = set(spec) - FIELDS.get(str(kind), set(spec))
    if unknown:
        raise GraderError(f"{kind} grader: unknown field {sorted(unknown)[0]!r}")
    name = spec.get("name", "")
    if not isinstance(name, str) or len(name) > 128:
        raise GraderError("grader name: a string of at most 128 characters")
    if kind == "magistral":
        l_max, l_cache = spec.get("l_max", 0), spec.get("l_cache", 0)
        if l_max and not (isinstance(l_max, int) and 16 <= l_max <= 8192):
            raise GraderError("magistral grader: l_max must be an integer, 16 to 8192")
        if l_cache and not (isinstance(l_cache, int) and 0 < l_cache < (l_max or 8192)):
            raise GraderError("magistral grader: l_cache must be a positive integer below l_max")
        return
    if kind == "string_check":
        if spec.get("operation") not in ("eq", "ne", "like", "ilike"):
            raise GraderError("string_check: operation must be eq, ne, like or ilike")
        for field in ("input", "reference"):
            _check_template(spec.get(field), f"string_check.{field}")
        return
    if kind == "text_similarity":
        if spec.get("evaluation_metric") != "fuzzy_match":
            raise GraderError("text_similarity: evaluation_metric fuzzy_match is the one available")
        for field in ("input", "reference"):
            _check_template(spec.get(field), f"text_similarity.{field}")
        return
    if kind == "multi":
        if depth:
            raise GraderError("multi graders cannot be nested")
        graders = spec.get("graders")
        if not isinstance(graders, dict) or not 1 <= len(graders) <= MAX_GRADERS:
            raise GraderError(f"multi: graders must name 1 to {MAX_GRADERS} graders")
        for name, inner in graders.items():
            if not str(name).isidentifier():
                raise GraderError(f"multi: grader name {name!r} must be an identifier")
            check_grader(inner, depth=depth + 1)
        _formula(spec.get("calculate_output"), set(graders))
        return
    raise GraderError(
        f"grader type {kind!r} is not known; use string_check, text_similarity, multi or magistral"
    )


def _check_template(value: Any, where: str) -> None:
    if not isinstance(value, str) or len(value) > 2000:
        raise GraderError(f"{where} must be a string of at most 2000 characters")
    for scope, path in _TEMPLATE.findall(value):
        if (scope, path) != ("sample", "output_text") and scope != "item":
            raise GraderError(
                f"{where}: only {{{{sample.output_text}}}} and {{{{item.<field>}}}} can be used"
            )


def render(template: str, answer: str, item: Mapping[str, Any]) -> str:
    def fill(match: re.Match[str]) -> str:
        scope, path = match.group(1), match.group(2)
        if scope == "sample":
            return answer
        value: Any = item
        for part in path.split("."):
            value = value.get(part, "") if isinstance(value, Mapping) else ""
        return str(value)

    return _TEMPLATE.sub(fill, template)


def build(spec: dict[str, Any]) -> Grader:
    """A scoring function for a checked grader (not for `magistral`, scored apart)."""
    kind = spec["type"]
    if kind == "string_check":
        compare: Callable[[str, str], bool] = {
            "eq": operator.eq,
            "ne": operator.ne,
            "like": lambda a, b: b in a,
            "ilike": lambda a, b: b.lower() in a.lower(),
        }[spec["operation"]]
        return lambda answer, item: float(
            compare(
                render(spec["input"], answer, item).strip(),
                render(spec["reference"], answer, item).strip(),
            )
        )
    if kind == "text_similarity":
        return lambda answer, item: difflib.SequenceMatcher(
            None,
            render(spec["input"], answer, item)[:MAX_COMPARED],
            render(spec["reference"], answer, item)[:MAX_COMPARED],
        ).ratio()
    if kind == "multi":
        parts = {name: build(inner) for name, inner in spec["graders"].items()}
        formula = _formula(spec["calculate_output"], set(parts))
        return lambda answer, item: formula(
            {name: grade(answer, item) for name, grade in parts.items()}
        )
    raise GraderError(f"grader type {kind!r} cannot be built here")


_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: lambda a, b: a / b if b else 0.0,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {"min": min, "max": max, "abs": abs}
_ARITY = {"min": (2, 8), "max": (2, 8), "abs": (1, 1)}  # arguments each function takes
MAX_CONSTANT = 1e6  # numbers in a formula; scores are in [0, 1]


def _formula(text: Any, names: set[str]) -> Callable[[dict[str, float]], float]:
    """`calculate_output` as a function of the graders' scores: numbers, grader names,
    + - * /, unary minus, min, max, abs. Anything else is refused."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_FORMULA:
        raise GraderError(f"multi: calculate_output must be a formula of 1 to {MAX_FORMULA} chars")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise GraderError("multi: calculate_output is not a formula") from None

    _check_node(tree, names)

    def formula(scores: dict[str, float]) -> float:
        return _value(tree, scores)

    _check_finite(formula, names)
    return formula


def _check_node(node: ast.AST, names: set[str]) -> None:
    """Refuses any node of a formula outside numbers, names, + - * / and the functions."""
    if isinstance(node, ast.Expression):
        _check_node(node.body, names)
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        _check_node(node.left, names)
        _check_node(node.right, names)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        _check_node(node.operand, names)
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        _check_constant(node.value)
    elif isinstance(node, ast.Name) and node.id in names:
        pass
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        low, high = _ARITY[node.func.id]
        if not low <= len(node.args) <= high or any(
            isinstance(arg, ast.Starred) for arg in node.args
        ):
            takes = f"{low}" if low == high else f"{low} to {high}"
            raise GraderError(f"multi: {node.func.id}() takes {takes} arguments")
        for arg in node.args:
            _check_node(arg, names)
    else:
        raise GraderError(
            "multi: calculate_output may use numbers, grader names, + - * /, min, max, abs"
        )


def _value(node: ast.AST, scores: dict[str, float]) -> float:
    if isinstance(node, ast.Expression):
        return _value(node.body, scores)
    if isinstance(node, ast.BinOp):
        return _OPERATORS[type(node.op)](_value(node.left, scores), _value(node.right, scores))
    if isinstance(node, ast.UnaryOp):
        return _OPERATORS[type(node.op)](_value(node.operand, scores))
    if isinstance(node, ast.Constant):
        return float(node.value)  # type: ignore[arg-type]  # checked: int or float
    if isinstance(node, ast.Name):
        return scores[node.id]
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return float(_FUNCTIONS[node.func.id](*(_value(a, scores) for a in node.args)))


def _check_constant(number: int | float) -> None:
    if isinstance(number, bool) or abs(number) > MAX_CONSTANT or not math.isfinite(number):
        raise GraderError(
            f"multi: numbers in calculate_output must be finite and at most {MAX_CONSTANT:g}"
        )


def _check_finite(formula: Callable[[dict[str, float]], float], names: set[str]) -> None:
    """A formula whose value overflows where every score is 0 or 1 would only fail once
    the job had spent its compute: refuse it now."""
    ordered = sorted(names)
    corners = [dict.fromkeys(ordered, 0.0), dict.fromkeys(ordered, 1.0)]
    corners += [{n: float(i == j) for j, n in enumerate(ordered)} for i in range(len(ordered))]
    for scores in corners:
        try:
            result = formula(scores)
        except (OverflowError, ValueError, ZeroDivisionError):
            result = math.inf
        if not math.isfinite(result):
            raise GraderError("multi: calculate_output must have a finite value for every score")


def answer_of(completion: str) -> str:
    """What OpenAI's graders see as `sample.output_text`: the answer after the thinking."""
    parts = split_thinking(completion)
    if parts is not None:
        return parts[1].strip()
    return completion.split("</think>", 1)[-1].strip()
