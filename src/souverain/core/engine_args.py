"""The engine arguments a deployment may set: an allowlist with types and bounds.

Anything else is refused at the API (422), before a replica could be started with it: a
context window larger than the model's, more threads than the deployment's CPUs, a value
of the wrong type. Engines never see an argument this module did not check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Value = str | int | float | bool


class EngineArgError(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"engine_args.{name}: {message}")
        self.name = name


@dataclass(frozen=True)
class Arg:
    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    max_length: int = 256


# What may serve the llamacpp engine (node/engines/registry.py): auto = llama-server where the
# node has it, else llama-cpp-python.
LLAMACPP_RUNTIMES = ("auto", "llama-server", "llama-cpp-python")
_CONTEXT = "context"  # bounded by the model's context length
_THREADS = "threads"  # bounded by the deployment's CPUs

ENGINE_ARGS: dict[str, dict[str, Arg]] = {
    "llamacpp": {
        "n_ctx": Arg(int, 128),
        "threads": Arg(int, 1),
        "n_gpu_layers": Arg(int, -1, 1000),
        "embedding": Arg(bool),
        # llama-server's parallel slots (each holds a whole context); llama-cpp-python has one
        "parallel": Arg(int, 1, 64),
        "runtime": Arg(str, choices=LLAMACPP_RUNTIMES),
        # a request whose sampler holds the engine longer on one token is stopped
        "sampling_limit_ms": Arg(int, 50, 60_000),
    },
    "vllm": {"max_model_len": Arg(int, 128), "gpu_memory_utilization": Arg(float, 0.1, 0.95)},
    "embeddings": {"threads": Arg(int, 1)},
    "stand-in": {
        "fault": Arg(str, choices=("sigill",)),
        "fault_while": Arg(str),
        "token_delay": Arg(float, 0.0, 1.0),
        # requests the gateway sends it at once (benchmarks: an engine of so many slots)
        "parallel": Arg(int, 1, 1024),
    },
}
_BOUNDED_BY = {"n_ctx": _CONTEXT, "max_model_len": _CONTEXT, "threads": _THREADS}


def check_engine_args(
    engine: str, args: dict[str, Value], *, context_length: int, cpus: float
) -> dict[str, Value]:
    """The arguments, checked; raises EngineArgError naming the first bad one."""
    allowed = ENGINE_ARGS.get(engine, {})
    for name, value in args.items():
        arg = allowed.get(name)
        if arg is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise EngineArgError(name, f"not an argument of the {engine} engine (known: {known})")
        _check(name, value, arg, _upper_bound(name, arg, context_length, cpus))
    return dict(args)


def _upper_bound(name: str, arg: Arg, context_length: int, cpus: float) -> float | None:
    bound = _BOUNDED_BY.get(name)
    if bound == _CONTEXT:
        return float(context_length)
    if bound == _THREADS:
        return float(max(1, math.ceil(cpus)))
    return arg.high


def _check(name: str, value: Value, arg: Arg, high: float | None) -> None:
    if arg.kind is bool:
        if not isinstance(value, bool):
            raise EngineArgError(name, "must be true or false")
        return
    if arg.kind is str:
        if not isinstance(value, str) or len(value) > arg.max_length:
            raise EngineArgError(name, f"must be a string of at most {arg.max_length} characters")
        if arg.choices and value not in arg.choices:
            raise EngineArgError(name, f"must be one of {', '.join(arg.choices)}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EngineArgError(name, f"must be {'an integer' if arg.kind is int else 'a number'}")
    if arg.kind is int and not isinstance(value, int):
        raise EngineArgError(name, "must be an integer")
    number = float(value)
    if not math.isfinite(number):
        raise EngineArgError(name, "must be finite")
    if arg.low is not None and number < arg.low:
        raise EngineArgError(name, f"must be at least {arg.low:g}")
    if high is not None and number > high:
        raise EngineArgError(name, f"must be at most {high:g} for this deployment")
