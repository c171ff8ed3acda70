"""The CLI does what the API does, as the README writes it: deployment constraints,
`models register` with builtin:// and hf:// URIs, fine-tuning restricted to jurisdictions,
and CSV that stays CSV whatever the terminal's width. Bad options are clear errors."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import openai

from souverain.core.roles import Role
from souverain.db.jobs import FineTuningJobRow
from tests.conftest import Platform, on_one_database

pytestmark = on_one_database()  # every test runs `souverain` processes

SOUVERAIN = str(Path(sys.executable).with_name("souverain"))


async def cli(platform: Platform, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOUVERAIN_URL": platform.url, "SOUVERAIN_API_KEY": key, "COLUMNS": "40"}
    return await asyncio.to_thread(
        subprocess.run,
        [SOUVERAIN, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestOperatorCommands:
    async def test_models_register_takes_builtin_and_hub_uris(self, platform: Platform) -> None:
        operator = await platform.operator_key()
        builtin = await cli(
            platform,
            operator,
            "models",
            "register",
            "cli-builtin",
            "builtin://smollm2-135m-instruct",
        )
        assert builtin.returncode == 0, builtin.stderr
        hub = await cli(
            platform, operator, "models", "register", "cli-hub", "hf://acme/tiny/model.gguf"
        )
        assert hub.returncode == 0, hub.stderr
        async with platform.client(operator) as client:
            models = {m["name"]: m for m in (await client.get("/api/models")).json()}
        assert models["cli-builtin"]["artifacts"][0]["uri"] == "builtin://smollm2-135m-instruct"
        assert models["cli-hub"]["artifacts"][0]["uri"] == "hf://acme/tiny/model.gguf"

    async def test_a_bad_source_is_a_clear_error(self, platform: Platform) -> None:
        operator = await platform.operator_key()
        missing = await cli(platform, operator, "models", "register", "x", "/nowhere/m.gguf")
        assert missing.returncode == 2
        assert "no such file" in missing.stderr
        unknown = await cli(platform, operator, "models", "register", "x", "builtin://nope")
        assert unknown.returncode == 1
        assert "unknown built-in model" in unknown.stderr

    async def test_deployments_take_the_apis_constraints(self, platform: Platform) -> None:
        operator = await platform.operator_key()
        await cli(
            platform, operator, "models", "register", "cli-eu", "builtin://smollm2-135m-instruct"
        )
        created = await cli(
            platform, operator, "deployments", "create", "cli-eu-chat", "--model", "cli-eu",
            "--replicas", "0", "--jurisdiction", "EU", "--certification", "HDS",
            "--operator-jurisdiction", "EU", "--strategy", "binpack",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        async with platform.client(operator) as client:
            found = (await client.get("/api/deployments/cli-eu-chat")).json()
        assert found["jurisdictions"] == ["EU"]
        assert found["certifications"] == ["HDS"]
        assert found["operator_jurisdictions"] == ["EU"]
        assert found["strategy"] == "binpack"

    async def test_bad_constraints_are_refused_before_anything_is_sent(
        self, platform: Platform
    ) -> None:
        operator = await platform.operator_key()
        bad = await cli(
            platform, operator, "deployments", "create", "cli-bad", "--model", "cli-eu",
            "--jurisdiction", "XX",
        )  # fmt: skip
        assert bad.returncode == 2
        assert "jurisdictions" in bad.stderr and "XX" in bad.stderr
        strategy = await cli(
            platform, operator, "deployments", "create", "cli-bad", "--model", "m",
            "--strategy", "random",
        )  # fmt: skip
        assert strategy.returncode == 2


class TestTenantCommands:
    async def test_usage_csv_is_csv_on_a_narrow_terminal(self, platform: Platform) -> None:
        model = await platform.served_model()
        tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
        owner = (await platform.factory.member_key(tenant, "o", Role.OWNER)).key
        async with platform.client(owner) as client:
            answered = await client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": 'a, "quoted" b'}]},
            )
            assert answered.status_code == 200, answered.text
        await asyncio.sleep(0.5)  # usage reaches the database in batches
        exported = await cli(platform, owner, "usage", "--csv")
        assert exported.returncode == 0, exported.stderr
        rows = list(csv.reader(io.StringIO(exported.stdout)))
        assert len(rows) >= 2
        assert {len(row) for row in rows} == {len(rows[0])}  # no line was wrapped
        assert max(len(line) for line in exported.stdout.splitlines()) > 40

    async def test_finetune_create_restricted_to_jurisdictions(self, platform: Platform) -> None:
        operator = await platform.operator_key()
        await cli(platform, operator, "models", "register", "cli-base",
                  "builtin://smollm2-135m-instruct")  # fmt: skip
        tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
        owner = (await platform.factory.member_key(tenant, "o", Role.OWNER)).key
        line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        uploaded = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=owner).files.create(
            file=("t.jsonl", io.BytesIO(line * 4)), purpose="fine-tune"
        )
        created = await cli(platform, owner, "finetune", "create", uploaded.id,
                            "--model", "cli-base", "--jurisdiction", "FR")  # fmt: skip
        assert created.returncode == 0, created.stderr
        job_id = created.stdout.split("created ", 1)[1].split()[0]
        async with platform.sessions() as session:
            job = await session.get(FineTuningJobRow, job_id)
        assert job is not None and job.jurisdictions == ["FR"]
        refused = await cli(platform, owner, "finetune", "create", uploaded.id,
                            "--model", "cli-base", "--jurisdiction", "XX")  # fmt: skip
        assert refused.returncode == 1
        assert "XX" in refused.stderr
        elsewhere = await cli(platform, owner, "finetune", "create", uploaded.id,
                              "--model", "cli-base", "--jurisdiction", "DE")  # fmt: skip
        assert elsewhere.returncode == 1  # its file is kept in France: the fix is named
        assert "451" in elsewhere.stderr and "project" in elsewhere.stderr, elsewhere.stderr
