from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from souverain.client.errors import ApiError, error_of, stream_into
from souverain.client.work import FilesAndBatches
from souverain.core.schemas.billing import (
    BudgetOut,
    BudgetSetRequest,
    CarbonSeriesRequest,
    PriceOut,
    PriceSetRequest,
    RateLimitsRequest,
)
from souverain.core.schemas.data_controls import DataControls, DataControlsRequest
from souverain.core.schemas.deployments import (
    Deployment,
    DeploymentCreateRequest,
    DeploymentUpdateRequest,
    DeploymentUsage,
)
from souverain.core.schemas.exports import Export
from souverain.core.schemas.fleet import (
    Datacenter,
    DatacenterCreateRequest,
    DatacenterUpdateRequest,
    Node,
)
from souverain.core.schemas.models import Model, ModelRegisterRequest
from souverain.core.schemas.policies import PolicyDocument, PolicyView
from souverain.core.schemas.tenancy import (
    ApiKey,
    ApiKeyCreated,
    KeyCreateRequest,
    Me,
    Member,
    MemberAddRequest,
    Organisation,
    OrganisationCreateRequest,
    Project,
    ProjectCreateRequest,
    ProjectUpdateRequest,
)
from souverain.core.schemas.usage import UsageReport

T = TypeVar("T")


class SouverainClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    @property
    def jobs(self) -> FilesAndBatches:
        return FilesAndBatches(self._http)

    def __enter__(self) -> SouverainClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # plumbing

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        payload = (
            body.model_dump(mode="json", exclude_none=True) if isinstance(body, BaseModel) else body
        )
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        response = self._http.request(method, path, json=payload, params=clean)
        if response.status_code >= 400:
            raise error_of(response)
        return None if response.status_code == 204 else response.json()

    def _get(self, kind: type[T], path: str, **params: Any) -> T:
        return TypeAdapter(kind).validate_python(self._request("GET", path, params=params))

    # identity and tenancy

    def me(self) -> Me:
        return self._get(Me, "/api/me")

    def list_orgs(self) -> list[Organisation]:
        return self._get(list[Organisation], "/api/orgs")

    def create_org(self, request: OrganisationCreateRequest) -> Organisation:
        return Organisation.model_validate(self._request("POST", "/api/orgs", body=request))

    def get_org(self, org: str) -> Organisation:
        return self._get(Organisation, f"/api/orgs/{org}")

    def list_projects(self, org: str) -> list[Project]:
        return self._get(list[Project], f"/api/orgs/{org}/projects")

    def create_project(self, org: str, request: ProjectCreateRequest) -> Project:
        return Project.model_validate(
            self._request("POST", f"/api/orgs/{org}/projects", body=request)
        )

    def update_project(self, org: str, project: str, request: ProjectUpdateRequest) -> Project:
        return Project.model_validate(
            self._request("PATCH", f"/api/orgs/{org}/projects/{project}", body=request)
        )

    def list_members(self, org: str) -> list[Member]:
        return self._get(list[Member], f"/api/orgs/{org}/members")

    def add_member(self, org: str, request: MemberAddRequest) -> Member:
        return Member.model_validate(
            self._request("POST", f"/api/orgs/{org}/members", body=request)
        )

    def remove_member(self, org: str, user: str) -> None:
        self._request("DELETE", f"/api/orgs/{org}/members/{user}")

    def create_key(self, request: KeyCreateRequest) -> ApiKeyCreated:
        return ApiKeyCreated.model_validate(self._request("POST", "/api/keys", body=request))

    def list_keys(self, org: str | None = None) -> list[ApiKey]:
        return self._get(list[ApiKey], "/api/keys", org=org)

    def revoke_key(self, key_id: str) -> ApiKey:
        return ApiKey.model_validate(self._request("DELETE", f"/api/keys/{key_id}"))

    # fleet

    def list_datacenters(self) -> list[Datacenter]:
        return self._get(list[Datacenter], "/api/datacenters")

    def create_datacenter(self, request: DatacenterCreateRequest) -> Datacenter:
        return Datacenter.model_validate(self._request("POST", "/api/datacenters", body=request))

    def update_datacenter(self, datacenter_id: str, request: DatacenterUpdateRequest) -> Datacenter:
        body = request.model_dump(mode="json", exclude_unset=True)
        return Datacenter.model_validate(
            self._request("PATCH", f"/api/datacenters/{datacenter_id}", body=body)
        )

    def list_nodes(self) -> list[Node]:
        return self._get(list[Node], "/api/nodes")

    # models and deployments

    def list_models(self) -> list[Model]:
        return self._get(list[Model], "/api/models")

    def register_model(self, request: ModelRegisterRequest) -> Model:
        return Model.model_validate(self._request("POST", "/api/models", body=request))

    def list_deployments(self) -> list[Deployment]:
        return self._get(list[Deployment], "/api/deployments")

    def get_deployment(self, ref: str) -> Deployment:
        return self._get(Deployment, f"/api/deployments/{ref}")

    def deployment_usage(self, ref: str, hours: int = 24) -> DeploymentUsage:
        return self._get(DeploymentUsage, f"/api/deployments/{ref}/usage", hours=hours)

    def create_deployment(self, request: DeploymentCreateRequest) -> Deployment:
        return Deployment.model_validate(self._request("POST", "/api/deployments", body=request))

    def scale_deployment(self, ref: str, replicas: int) -> Deployment:
        return self.update_deployment(ref, DeploymentUpdateRequest(replicas=replicas))

    def update_deployment(self, ref: str, request: DeploymentUpdateRequest) -> Deployment:
        body = request.model_dump(mode="json", exclude_unset=True)
        return Deployment.model_validate(
            self._request("PATCH", f"/api/deployments/{ref}", body=body)
        )

    # sovereignty

    def get_policy(
        self, org: str, project: str | None = None, *, effective: bool = False
    ) -> PolicyView:
        if project is None:
            return self._get(PolicyView, f"/api/orgs/{org}/policy")
        path = f"/api/orgs/{org}/projects/{project}/policy"
        return self._get(PolicyView, path, effective=str(effective).lower())

    def set_policy(
        self, org: str, document: PolicyDocument, project: str | None = None
    ) -> PolicyView:
        path = (
            f"/api/orgs/{org}/policy"
            if project is None
            else f"/api/orgs/{org}/projects/{project}/policy"
        )
        body = document.model_dump(mode="json")
        return PolicyView.model_validate(self._request("PUT", path, body=body))

    def get_data_controls(self, org: str) -> DataControls:
        return self._get(DataControls, f"/api/orgs/{org}/data-controls")

    def set_data_controls(self, org: str, request: DataControlsRequest) -> DataControls:
        body = request.model_dump(mode="json")
        path = f"/api/orgs/{org}/data-controls"
        return DataControls.model_validate(self._request("PUT", path, body=body))

    def create_export(self, org: str) -> Export:
        return Export.model_validate(self._request("POST", f"/api/orgs/{org}/exports"))

    def get_export(self, org: str, export_id: str) -> Export:
        return self._get(Export, f"/api/orgs/{org}/exports/{export_id}")

    def download_export(self, org: str, export_id: str, into: Any) -> int:
        """Stream the archive into `into` (a binary file); the bytes written."""
        return stream_into(self._http, f"/api/orgs/{org}/exports/{export_id}/content", into)

    def erase_org(self, org: str) -> dict[str, Any]:
        erased: dict[str, Any] = self._request("POST", f"/api/orgs/{org}/crypto-erase")
        return erased

    def erasure_certificate(self, org: str) -> dict[str, Any]:
        found: dict[str, Any] = self._request("GET", f"/api/orgs/{org}/erasure-certificate")
        return found

    def residency_report(self, org: str, *, since: datetime, until: datetime) -> dict[str, Any]:
        params = {"from": since.isoformat(), "to": until.isoformat()}
        report: dict[str, Any] = self._request(
            "GET", f"/api/orgs/{org}/reports/residency", params=params
        )
        return report

    def audit_events(
        self,
        *,
        org: str | None = None,
        action: str | None = None,
        limit: int = 1000,
        after_seq: int = 0,
    ) -> dict[str, Any]:
        page: dict[str, Any] = self._request(
            "GET",
            "/api/audit",
            params={"org": org, "action": action, "limit": limit, "after_seq": after_seq},
        )
        return page

    def audit_chain(self, *, after_seq: int = 0) -> dict[str, Any]:
        chain: dict[str, Any] = self._request(
            "GET", "/api/audit/chain", params={"after_seq": after_seq}
        )
        return chain

    def signing_key(self) -> dict[str, str]:

        key: dict[str, str] = self._request("GET", "/api/signing-key")
        return key

    def delete_deployment(self, ref: str) -> Deployment:
        return Deployment.model_validate(self._request("DELETE", f"/api/deployments/{ref}"))

    # usage

    def usage(
        self,
        *,
        org: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: str = "model",
        limit: int = 100,
        model: str | None = None,
        project: str | None = None,
        key: str | None = None,
    ) -> UsageReport:
        return self._get(
            UsageReport,
            "/api/usage",
            org=org,
            group_by=group_by,
            limit=limit,
            model=model,
            project=project,
            key=key,
            **{
                "from": since.isoformat() if since else None,
                "to": until.isoformat() if until else None,
            },
        )

    def usage_csv(self, **params: Any) -> str:
        clean = {k: v for k, v in params.items() if v is not None} | {"format": "csv"}
        response = self._http.get("/api/usage", params=clean)
        if response.status_code >= 400:
            raise error_of(response)
        return response.text

    # billing and quotas

    def set_price(self, model: str, request: PriceSetRequest) -> PriceOut:
        return PriceOut.model_validate(
            self._request("PUT", f"/api/models/{model}/price", body=request)
        )

    def list_prices(self) -> list[PriceOut]:
        return self._get(list[PriceOut], "/api/prices")

    def invoice(self, org: str, period: str, *, csv: bool = False) -> dict[str, Any] | str:
        if csv:
            response = self._http.get(
                f"/api/orgs/{org}/invoices/{period}", params={"format": "csv"}
            )
            if response.status_code >= 400:
                raise error_of(response)
            return response.text
        document: dict[str, Any] = self._request("GET", f"/api/orgs/{org}/invoices/{period}")
        return document

    def set_budget(
        self, org: str, request: BudgetSetRequest, project: str | None = None
    ) -> BudgetOut:
        path = (
            f"/api/orgs/{org}/budget"
            if project is None
            else f"/api/orgs/{org}/projects/{project}/budget"
        )
        return BudgetOut.model_validate(
            self._request("PUT", path, body=request.model_dump(mode="json"))
        )

    def list_budgets(self, org: str, period: str | None = None) -> list[BudgetOut]:
        return self._get(list[BudgetOut], f"/api/orgs/{org}/budgets", period=period)

    def set_key_limits(self, key_id: str, request: RateLimitsRequest) -> RateLimitsRequest:
        body = request.model_dump(mode="json")
        return RateLimitsRequest.model_validate(
            self._request("PUT", f"/api/keys/{key_id}/limits", body=body)
        )

    def set_project_limits(
        self, org: str, project: str, request: RateLimitsRequest
    ) -> RateLimitsRequest:
        body = request.model_dump(mode="json")
        path = f"/api/orgs/{org}/projects/{project}/limits"
        return RateLimitsRequest.model_validate(self._request("PUT", path, body=body))

    def load_carbon(self, datacenter: str, request: CarbonSeriesRequest) -> int:
        loaded: dict[str, int] = self._request(
            "PUT", f"/api/datacenters/{datacenter}/carbon", body=request
        )
        return loaded["hours"]

    # inference (the CLI's chat; SDK users call /v1 directly)

    def stream_chat(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Iterator[str]:
        import json

        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        with self._http.stream("POST", "/v1/chat/completions", json=body, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise error_of(response)
            for line in response.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    raise ApiError(
                        502, chunk["error"].get("code", "upstream_error"), chunk["error"]["message"]
                    )
                for choice in chunk.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
