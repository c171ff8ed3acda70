"""Policies: the operator sets ceilings, org admins narrow them per project, never widen."""

from __future__ import annotations

from souverain.core.roles import Role
from tests.conftest import Platform


class TestPolicies:
    async def test_ceiling_then_narrower_project_policy(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"ad": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "ad", Role.ADMIN)
        operator = await platform.operator_key()
        org = tenant.org_name
        async with platform.client(operator) as op:
            ceiling = await op.put(
                f"/api/orgs/{org}/policy", json={"jurisdictions": ["EU"], "retention_days": 30}
            )
            assert ceiling.status_code == 200, ceiling.text
            assert ceiling.json()["policy"]["jurisdictions"] == ["EU"]
        async with platform.client(admin.key) as client:
            narrowed = await client.put(
                f"/api/orgs/{org}/projects/default/policy",
                json={
                    "jurisdictions": ["FR", "DE"],
                    "certifications": ["HDS"],
                    "retention_days": 7,
                },
            )
            assert narrowed.status_code == 200, narrowed.text
            effective = (
                await client.get(
                    f"/api/orgs/{org}/projects/default/policy", params={"effective": True}
                )
            ).json()
            assert effective["scope"] == "effective"
            assert effective["policy"]["jurisdictions"] == ["DE", "FR"]
            assert effective["policy"]["retention_days"] == 7
            assert effective["policy"]["certifications"] == ["HDS"]

    async def test_widening_is_refused_with_each_reason(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"ad": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "ad", Role.ADMIN)
        org = tenant.org_name
        async with platform.client(await platform.operator_key()) as op:
            await op.put(
                f"/api/orgs/{org}/policy",
                json={"jurisdictions": ["EU"], "certifications": ["ISO27001"]},
            )
        async with platform.client(admin.key) as client:
            for body, expected in (
                (
                    {"jurisdictions": ["FR", "US"], "certifications": ["ISO27001"]},
                    "US not allowed by the ceiling",
                ),
                (
                    {
                        "jurisdictions": ["FR"],
                        "certifications": ["ISO27001"],
                        "content_logging": True,
                    },
                    "content_logging",
                ),
            ):
                response = await client.put(f"/api/orgs/{org}/projects/default/policy", json=body)
                assert response.status_code == 403, body
                assert expected in response.json()["error"]["message"]
            current = (await client.get(f"/api/orgs/{org}/projects/default/policy")).json()
            assert current["version_id"] is None  # nothing was written

    async def test_a_project_policy_inherits_what_it_leaves_open(self, platform: Platform) -> None:
        """The README's pair: an `--operator-jurisdiction EU` ceiling, then a project policy
        naming only a country and a certification."""
        tenant = await platform.factory.tenant(roles={"ad": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "ad", Role.ADMIN)
        org = tenant.org_name
        async with platform.client(await platform.operator_key()) as op:
            await op.put(
                f"/api/orgs/{org}/policy",
                json={"jurisdictions": ["EU"], "operator_jurisdictions": ["EU"]},
            )
        async with platform.client(admin.key) as client:
            response = await client.put(
                f"/api/orgs/{org}/projects/default/policy",
                json={"jurisdictions": ["FR"], "certifications": ["HDS"]},
            )
            assert response.status_code == 200, response.text
            effective = (
                await client.get(
                    f"/api/orgs/{org}/projects/default/policy", params={"effective": True}
                )
            ).json()["policy"]
        assert effective["jurisdictions"] == ["FR"]
        assert effective["operator_jurisdictions"] == ["EU"]
        assert effective["certifications"] == ["HDS"]

    async def test_only_the_operator_sets_ceilings_and_only_admins_set_project_policies(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER, "mem": Role.MEMBER})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        member = await platform.factory.member_key(tenant, "mem", Role.MEMBER)
        org = tenant.org_name
        async with platform.client(owner.key) as client:
            assert (await client.put(f"/api/orgs/{org}/policy", json={})).status_code == 403
        async with platform.client(member.key) as client:
            assert (
                await client.put(f"/api/orgs/{org}/projects/default/policy", json={})
            ).status_code == 403
            assert (await client.get(f"/api/orgs/{org}/policy")).status_code == 200

    async def test_other_tenants_policies_are_invisible(self, platform: Platform) -> None:
        a = await platform.factory.tenant(roles={"a": Role.OWNER})
        b = await platform.factory.tenant(roles={"b": Role.OWNER})
        key_a = await platform.factory.member_key(a, "a", Role.OWNER)
        async with platform.client(key_a.key) as client:
            assert (await client.get(f"/api/orgs/{b.org_name}/policy")).status_code == 404
            assert (
                await client.put(f"/api/orgs/{b.org_name}/projects/default/policy", json={})
            ).status_code == 404

    async def test_unknown_jurisdiction_is_a_validation_error(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant()
        async with platform.client(await platform.operator_key()) as op:
            response = await op.put(
                f"/api/orgs/{tenant.org_name}/policy", json={"jurisdictions": ["XX"]}
            )
        assert response.status_code == 422
        assert "XX" in response.json()["error"]["message"]
