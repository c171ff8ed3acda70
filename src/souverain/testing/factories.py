"""Factories: put tenants, keys, models and ready replicas straight into the database.

Names get a random suffix so tests can share one database without colliding.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.ids import hash_secret, new_api_key, new_id
from souverain.core.roles import Role, Scope, scopes_of
from souverain.db.tables import (
    ApiKeyRow,
    DatacenterRow,
    DeploymentRow,
    MembershipRow,
    ModelArtifactRow,
    ModelRow,
    OrganisationRow,
    ProjectRow,
    ReplicaRow,
    UserRow,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@dataclass
class Tenant:
    org_id: str
    org_name: str
    project_id: str
    users: dict[str, str]  # user name -> id


@dataclass
class Key:
    id: str
    key: str
    user_id: str
    org_id: str | None


class Factory:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def tenant(
        self, name: str | None = None, *, roles: dict[str, Role] | None = None
    ) -> Tenant:
        """An organisation with a default project and members: {"alice": Role.OWNER, …}."""
        org_name = name or unique("org")
        roles = roles if roles is not None else {unique("owner"): Role.OWNER}
        async with self.sessions.begin() as session:
            org = OrganisationRow(id=new_id("org"), name=org_name, display_name=org_name)
            project = ProjectRow(id=new_id("prj"), org_id=org.id, name="default")
            session.add(org)
            await session.flush()
            session.add(project)
            users = {}
            for user_name, role in roles.items():
                user = UserRow(id=new_id("usr"), name=f"{user_name}-{org_name}", is_operator=False)
                session.add(user)
                await session.flush()
                session.add(
                    MembershipRow(id=new_id("mem"), org_id=org.id, user_id=user.id, role=role)
                )
                users[user_name] = user.id
        return Tenant(org.id, org_name, project.id, users)

    async def operator(self) -> Key:
        async with self.sessions.begin() as session:
            user = UserRow(id=new_id("usr"), name=unique("operator"), is_operator=True)
            session.add(user)
        return await self.key(user_id=user.id, org_id=None, role=Role.OPERATOR)

    async def key(
        self,
        *,
        user_id: str,
        org_id: str | None,
        role: Role,
        scopes: frozenset[Scope] | None = None,
        project_id: str | None = None,
        expires_at: datetime | None = None,
        revoked_at: datetime | None = None,
    ) -> Key:
        key_id, secret, full = new_api_key()
        async with self.sessions.begin() as session:
            session.add(
                ApiKeyRow(
                    id=key_id,
                    secret_hash=hash_secret(secret),
                    name="test key",
                    user_id=user_id,
                    created_by=user_id,
                    org_id=org_id,
                    project_id=project_id,
                    role=role,
                    scopes=sorted(scopes if scopes is not None else scopes_of(role)),
                    expires_at=expires_at,
                    revoked_at=revoked_at,
                )
            )
        return Key(key_id, full, user_id, org_id)

    async def new_member(self, org_id: str, role: Role) -> Key:
        """A fresh user made a member of `org_id`, with a key of that role."""
        async with self.sessions.begin() as session:
            user = UserRow(id=new_id("usr"), name=unique("member"), is_operator=False)
            session.add(user)
            await session.flush()
            session.add(MembershipRow(id=new_id("mem"), org_id=org_id, user_id=user.id, role=role))
        return await self.key(user_id=user.id, org_id=org_id, role=role)

    async def member_key(self, tenant: Tenant, user: str, role: Role) -> Key:

        return await self.key(user_id=tenant.users[user], org_id=tenant.org_id, role=role)

    async def datacenter(
        self, dc_id: str | None = None, *, country: str = "FR", carbon: float = 50.0
    ) -> str:
        dc_id = dc_id or unique("dc")
        async with self.sessions.begin() as session:
            if await session.get(DatacenterRow, dc_id) is None:
                session.add(
                    DatacenterRow(
                        id=dc_id,
                        name=dc_id,
                        country=country,
                        operator_name="test operator",
                        operator_country=country,
                        certifications=[],
                        carbon_intensity=carbon,
                    )
                )
        return dc_id

    async def served_model(
        self,
        *,
        url: str,
        datacenter_id: str,
        name: str | None = None,
        owner_org_id: str | None = None,
        capabilities: tuple[str, ...] = ("chat", "completions"),
        replica_id: str | None = None,
        engine: str = "stand-in",
        more_replicas: tuple[tuple[str, str], ...] = (),
        reasoning_default: bool = False,
        reasoning_tags: str | None = None,
    ) -> tuple[str, str]:
        """A model with a deployment and one ready replica at `url` (by default the stand-in
        engine, which serves any number of requests at once), plus `more_replicas` as
        (url, replica id), all in one transaction. Returns (model name, replica id)."""
        name = name or unique("model")
        replica_id = replica_id or new_id("rep")
        async with self.sessions.begin() as session:
            model = ModelRow(
                id=new_id("mdl"),
                name=name,
                owner_org_id=owner_org_id,
                engine=engine,
                capabilities=list(capabilities),
                reasoning_tags=reasoning_tags,
                context_length=4096,
                description="",
            )
            session.add(model)
            await session.flush()
            session.add(_test_artifact(model.id))
            deployment = _test_deployment(model, reasoning_default=reasoning_default)
            session.add(deployment)
            await session.flush()
            for replica_url, replica in ((url, replica_id), *more_replicas):
                session.add(
                    ReplicaRow(
                        id=replica,
                        deployment_id=deployment.id,
                        actor_name=f"test-{replica}",
                        datacenter_id=datacenter_id,
                        node_id="node-test",
                        url=replica_url,
                        state="ready",
                        reason="",
                        engine_restarts=0,
                    )
                )
            deployment.replicas = 1 + len(more_replicas)
        return name, replica_id

    async def replica_observed(
        self, replica_id: str, *, prompt_overhead: tuple[int, int] | None,
        runtime: str | None = None, slots: int | None = None,
    ) -> None:  # fmt: skip
        """Write what the replica observer would, from an engine a test supervises itself."""
        async with self.sessions.begin() as session:
            replica = await session.get(ReplicaRow, replica_id)
            assert replica is not None
            replica.runtime, replica.slots = runtime, slots
            if prompt_overhead is not None:
                replica.prompt_overhead_fixed, replica.prompt_overhead_per_message = prompt_overhead
            replica.updated_at = datetime.now(UTC)

    async def stand_in_model(self, name: str, *, owner_org_id: str | None = None) -> str:
        """A model served by the stand-in engine as a real process (fault tests): the API
        refuses this engine, so the fixture writes the model itself. Deploy it through
        the API like any other."""
        async with self.sessions.begin() as session:
            model = ModelRow(
                id=new_id("mdl"),
                name=name,
                owner_org_id=owner_org_id,
                engine="stand-in",
                capabilities=["chat", "completions"],
                context_length=4096,
                description="stand-in engine (fault tests)",
            )
            session.add(model)
            await session.flush()
            session.add(
                ModelArtifactRow(
                    id=new_id("art"),
                    model_id=model.id,
                    uri="builtin://smollm2-135m-instruct",  # resolved, never read
                    sha256=None,
                    size_bytes=None,
                    format="gguf",
                    license="test",
                    source="test",
                )
            )
        return name


def _test_artifact(model_id: str) -> ModelArtifactRow:
    """The artifact row a served test model needs (its engine is already running)."""
    return ModelArtifactRow(
        id=new_id("art"),
        model_id=model_id,
        uri="file:///dev/null",
        sha256=None,
        size_bytes=None,
        format="gguf",
        license="test",
        source="test",
    )


def _test_deployment(model: ModelRow, *, reasoning_default: bool) -> DeploymentRow:
    """A ready deployment of one replica of a served test model."""
    return DeploymentRow(
        id=new_id("dep"),
        name=unique("dep"),
        model_id=model.id,
        org_id=model.owner_org_id,
        engine=model.engine,
        replicas=1,
        datacenters=[],
        cpus=1,
        gpus=0,
        engine_args={},
        status="ready",
        status_reason="",
        reasoning_default=reasoning_default,
    )
