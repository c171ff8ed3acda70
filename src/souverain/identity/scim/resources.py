"""SCIM resources as scim2-models types: parsing requests, writing responses, filters,
the discovery documents, and the errors in SCIM's own shape.

souverain takes people and groups from the directory, not rights: `roles`, `entitlements`
and `x509Certificates` are not in its User schema, and a request that sets them (to make
someone an operator, say) is refused; `password` is never stored nor returned.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from scim2_models import (
    AuthenticationScheme,
    BaseModel,
    Bulk,
    ChangePassword,
    Context,
    ETag,
    Filter,
    Group,
    Meta,
    Patch,
    PatchOp,
    ResourceType,
    ResponseParameters,
    Schema,
    SCIMException,
    ScimFilter,
    ServiceProviderConfig,
    Sort,
    User,
)

from souverain.core.errors import ErrorCode, SouverainError

R = TypeVar("R", User[Any], Group)

FORBIDDEN_USER_ATTRIBUTES = ("roles", "entitlements", "x509_certificates")
NOT_IN_SCHEMA = {"password", "roles", "entitlements", "x509Certificates"}
MAX_RESULTS = 200


class ScimError(SouverainError):
    """An error in SCIM's shape: `status` and, for 400 and 409, a `scimType`."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.scim_type = scim_type
        self.code = {401: ErrorCode.UNAUTHENTICATED, 404: ErrorCode.NOT_FOUND}.get(
            status, ErrorCode.CONFLICT if status == 409 else ErrorCode.INVALID_REQUEST
        )

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": str(self.status),
            "detail": self.message,
        }
        if self.scim_type:
            error["scimType"] = self.scim_type
        return error


def parse(model: type[R], payload: Any, context: Context) -> R:
    """A request body as a typed resource, or a 400 in SCIM's shape."""
    if not isinstance(payload, dict):
        raise ScimError(400, "The body must be a JSON object.", "invalidSyntax")
    try:
        return model.model_validate(payload, scim_ctx=context)
    except SCIMException as error:
        raise ScimError(
            400, str(error)[:300], getattr(error, "scim_type", "invalidValue")
        ) from error
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ScimError(400, f"{where}: {first.get('msg')}"[:300], "invalidValue") from error


def parse_patch(model: type[R], payload: Any) -> PatchOp[R]:
    if not isinstance(payload, dict):
        raise ScimError(400, "The body must be a JSON object.", "invalidSyntax")
    try:
        return PatchOp[model].model_validate(  # type: ignore[valid-type]
            payload, scim_ctx=Context.RESOURCE_PATCH_REQUEST
        )
    except SCIMException as error:
        raise ScimError(
            400, str(error)[:300], getattr(error, "scim_type", "invalidValue")
        ) from error
    except ValidationError as error:
        raise ScimError(400, str(error.errors()[0].get("msg"))[:300], "invalidValue") from error


def apply_patch(patch: PatchOp[R], resource: R) -> None:
    try:
        patch.patch(resource)
    except SCIMException as error:
        raise ScimError(
            400, str(error)[:300], getattr(error, "scim_type", "invalidValue")
        ) from error
    except (ValidationError, ValueError, TypeError) as error:
        raise ScimError(400, str(error)[:300], "invalidValue") from error


def check_no_rights(user: User[Any]) -> None:
    """The directory gives people and groups, never rights."""
    for attribute in FORBIDDEN_USER_ATTRIBUTES:
        if getattr(user, attribute, None):
            raise ScimError(
                400,
                f"souverain does not take '{attribute}' from the directory: roles come from "
                "the organisation's group mapping.",
                "invalidValue",
            )


def stored(resource: User[Any] | Group) -> dict[str, Any]:
    """What is kept of a resource: its attributes, without id, meta, groups or password."""
    dumped = resource.model_dump(scim_ctx=Context.RESOURCE_REPLACEMENT_RESPONSE)
    for transient in ("id", "meta", "groups", "members", "password"):
        dumped.pop(transient, None)
    return dumped


def meta(kind: str, location: str, created: datetime, updated: datetime, version: int) -> Meta:
    return Meta(
        resource_type=kind,
        created=created,
        last_modified=updated,
        location=location,
        version=f'W/"{version}"',
    )


def response_parameters(
    model: type[R], attributes: str | None, excluded: str | None
) -> ResponseParameters[Any] | None:
    """The `attributes` / `excludedAttributes` query parameters (RFC 7644 §3.9)."""
    if not attributes and not excluded:
        return None
    try:
        return ResponseParameters[model].model_validate(  # type: ignore[valid-type]
            {"attributes": attributes, "excludedAttributes": excluded}
        )
    except (SCIMException, ValidationError, ValueError) as error:
        raise ScimError(400, "Invalid attributes or excludedAttributes.", "invalidPath") from error


def dump(
    resource: BaseModel,
    context: Context,
    parameters: ResponseParameters[Any] | None = None,
) -> dict[str, Any]:
    try:
        return resource.model_dump(scim_ctx=context, response_parameters=parameters)
    except (SCIMException, ValueError) as error:
        raise ScimError(400, str(error)[:300], "invalidValue") from error


def checked_filter(model: type[R], expression: str | None) -> ScimFilter[R] | None:
    if expression is None:
        return None
    try:
        return ScimFilter[model](expression)  # type: ignore[valid-type]
    except (SCIMException, ValueError) as error:
        raise ScimError(400, f"Invalid filter: {error}"[:300], "invalidFilter") from error


def equality(filter_: ScimFilter[Any] | None, attribute: str) -> str | None:
    """The value when the filter is exactly `<attribute> eq "<value>"` (what directories
    send to look someone up): answered by an index instead of a scan."""
    if filter_ is None:
        return None
    node = filter_.ast
    op = getattr(node, "op", None)
    path = getattr(node, "attr_path", None)
    if op is None or path is None or str(op).lower() != "eq":
        return None
    if (path.attr or "").lower() != attribute.lower() or path.sub_attr:
        return None
    value = getattr(node, "value", None)
    return value if isinstance(value, str) else None


def discovery_documents(base_url: str) -> dict[str, Any]:
    """ServiceProviderConfig, ResourceTypes and Schemas, as this server serves them."""
    user_schema = User.to_schema()
    user_schema.attributes = [
        a for a in user_schema.attributes or [] if a.name not in NOT_IN_SCHEMA
    ]
    schemas: list[Schema] = [user_schema, Group.to_schema()]
    types = [ResourceType.from_resource(User), ResourceType.from_resource(Group)]
    config = ServiceProviderConfig(
        documentation_uri=None,
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=False),
        authentication_schemes=[
            AuthenticationScheme(
                type="oauthbearertoken",
                name="Bearer token",
                description="A SCIM token of the organisation (scim-souv-…), made by its owner.",
                primary=True,
            )
        ],
    )
    return {
        "config": config,
        "schemas": {s.id: s for s in schemas},
        "types": {t.id: t for t in types},
        "base_url": base_url,
    }
