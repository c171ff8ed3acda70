"""Engine arguments, attacked: only the allowlisted arguments of the model's engine, with
their types and bounds (a context no larger than the model's, no more threads than the
deployment's CPUs), or a 422 before any replica is started."""

from __future__ import annotations

import pytest

from souverain.core.roles import Role
from souverain.testing.factories import unique
from tests.conftest import Platform
from tests.security.helpers import assert_openai_error

REFUSED = [
    {"n_ctx": 131072},  # above the model's 4,096: a 24 GiB allocation on the node
    {"n_ctx": 4097},
    {"n_ctx": 0},
    {"n_ctx": -1},
    {"n_ctx": "4096"},
    {"n_ctx": 1e12},
    {"threads": "abc"},
    {"threads": 0},
    {"threads": 3},  # more than the deployment's 2 CPUs
    {"threads": True},
    {"threads": 1.5},
    {"n_gpu_layers": 10**9},
    {"embedding": "yes"},
    {"model": "/data/secret.key"},  # not an argument at all: never reaches argv
    {"--model": "/etc/passwd"},
    {"api_key": "mine"},
    {"host": "0.0.0.0"},
    {"port": 1},
    {"chat_format": "../../x"},
    {"max_model_len": 1024},  # a vLLM argument, not llama.cpp's
]


@pytest.fixture
async def admin(platform: Platform) -> tuple[str, str]:
    tenant = await platform.factory.tenant(roles={"a": Role.ADMIN})
    return tenant.org_name, (await platform.factory.member_key(tenant, "a", Role.ADMIN)).key


async def _deploy(platform: Platform, key: str, org: str, model: str, args: object) -> object:
    body = {"name": unique("d"), "model": model, "org": org, "cpus": 2, "engine_args": args}
    async with platform.client(key) as client:
        return await client.post("/api/deployments", json=body)


@pytest.mark.parametrize("args", REFUSED, ids=[str(a) for a in REFUSED])
async def test_arguments_outside_the_allowlist_are_422(
    platform: Platform, admin: tuple[str, str], args: dict[str, object]
) -> None:
    org, key = admin
    model = await platform.served_model(engine="llamacpp")
    refused = await _deploy(platform, key, org, model, args)
    error = assert_openai_error(refused, 422)  # type: ignore[arg-type]
    assert error["param"].startswith("engine_args.")
    async with platform.client(key) as client:
        listed = (await client.get("/api/deployments")).json()
    assert not [d for d in listed if d.get("org_id") and d["model"] == model]


async def test_allowlisted_arguments_within_bounds_are_accepted(
    platform: Platform, admin: tuple[str, str]
) -> None:
    org, key = admin
    model = await platform.served_model(engine="llamacpp")
    accepted = await _deploy(platform, key, org, model, {"n_ctx": 2048, "threads": 2})
    assert accepted.status_code == 201, accepted.text  # type: ignore[attr-defined]
