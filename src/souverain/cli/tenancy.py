"""orgs, projects, members, keys."""

from __future__ import annotations

from typing import Literal

import typer
from rich.table import Table

from souverain.cli.context import client, console
from souverain.core.roles import Role, Scope
from souverain.core.schemas.tenancy import (
    KeyCreateRequest,
    MemberAddRequest,
    OrganisationCreateRequest,
    ProjectCreateRequest,
    ProjectUpdateRequest,
)

orgs = typer.Typer(help="Organisations (tenants).", no_args_is_help=True)
projects = typer.Typer(help="Projects inside an organisation.", no_args_is_help=True)
members = typer.Typer(help="Members of an organisation and their roles.", no_args_is_help=True)
keys = typer.Typer(help="API keys.", no_args_is_help=True)


@orgs.command("list")
def orgs_list() -> None:
    with client() as c:
        table = Table("id", "name", "display name", "created")
        for org in c.list_orgs():
            table.add_row(org.id, org.name, org.display_name, f"{org.created_at:%Y-%m-%d}")
        console.print(table)


@orgs.command("create")
def orgs_create(
    name: str,
    owner: str = typer.Option(None, help="User who becomes owner (created if new)."),
    display_name: str = typer.Option(None, "--display-name"),
) -> None:
    with client() as c:
        org = c.create_org(
            OrganisationCreateRequest(name=name, owner=owner, display_name=display_name)
        )
    console.print(f"created organisation [bold]{org.name}[/bold] ({org.id}) with project 'default'")


PROJECT_PRIORITY_HELP = (
    "interactive, or batch: every key of the project queues behind interactive requests."
)


def _priority(value: str) -> Literal["interactive", "batch"]:
    if value == "interactive":
        return "interactive"
    if value == "batch":
        return "batch"
    raise typer.BadParameter("interactive or batch", param_hint="--priority")


@projects.command("list")
def projects_list(org: str = typer.Option(..., "--org")) -> None:
    with client() as c:
        table = Table("id", "name", "priority", "created")
        for project in c.list_projects(org):
            table.add_row(
                project.id, project.name, project.priority, f"{project.created_at:%Y-%m-%d}"
            )
        console.print(table)


@projects.command("create")
def projects_create(
    name: str,
    org: str = typer.Option(..., "--org"),
    priority: str | None = typer.Option(
        None, help=PROJECT_PRIORITY_HELP + " Left out: interactive if your key may set it."
    ),
) -> None:
    request = ProjectCreateRequest(name=name, priority=_priority(priority) if priority else None)
    with client() as c:
        project = c.create_project(org, request)
    console.print(f"created project [bold]{project.name}[/bold] ({project.id}), {project.priority}")


@projects.command("update")
def projects_update(
    name: str,
    org: str = typer.Option(..., "--org"),
    priority: str = typer.Option(..., help=PROJECT_PRIORITY_HELP),
) -> None:
    with client() as c:
        project = c.update_project(org, name, ProjectUpdateRequest(priority=_priority(priority)))
    console.print(f"project [bold]{project.name}[/bold] is now {project.priority}")


@members.command("list")
def members_list(org: str = typer.Option(..., "--org")) -> None:
    with client() as c:
        table = Table("user", "role", "since")
        for member in c.list_members(org):
            table.add_row(member.user, member.role, f"{member.created_at:%Y-%m-%d}")
        console.print(table)


@members.command("add")
def members_add(
    user: str, org: str = typer.Option(..., "--org"), role: Role = typer.Option(Role.MEMBER)
) -> None:
    with client() as c:
        member = c.add_member(org, MemberAddRequest(user=user, role=role))
    console.print(f"{member.user} is now {member.role} of {org}")


@members.command("remove")
def members_remove(user: str, org: str = typer.Option(..., "--org")) -> None:
    with client() as c:
        c.remove_member(org, user)
    console.print(f"removed {user} from {org}")


@keys.command("create")
def keys_create(
    name: str = typer.Option("", help="A label for the key."),
    org: str = typer.Option(None, help="Organisation (default: your key's)."),
    project: str = typer.Option(None, help="Restrict the key to one project."),
    user: str = typer.Option(None, help="Issue for another member (needs manage)."),
    role: Role = typer.Option(Role.MEMBER),
    scope: list[Scope] = typer.Option(None, help="Narrow the role's scopes (repeatable)."),
    expires_in_days: float = typer.Option(None, "--expires-in-days"),
    priority: str = typer.Option(
        "interactive", help="interactive, or batch: its requests wait behind interactive ones."
    ),
) -> None:
    request = KeyCreateRequest(
        priority=_priority(priority),
        name=name,
        org=org,
        project=project,
        user=user,
        role=role,
        scopes=list(scope) if scope else None,
        expires_in_days=expires_in_days,
    )
    with client() as c:
        created = c.create_key(request)
    console.print(
        f"key [bold]{created.id}[/bold] ({created.role}, scopes: {', '.join(created.scopes)})"
    )
    console.print("store it now, it is not shown again:")
    console.print(created.key, soft_wrap=True, highlight=False)


@keys.command("list")
def keys_list(org: str = typer.Option(None, "--org")) -> None:
    with client() as c:
        table = Table("id", "name", "user", "role", "scopes", "expires", "state")
        for key in c.list_keys(org):
            state = "revoked" if key.revoked_at else "active"
            expires = f"{key.expires_at:%Y-%m-%d %H:%M}" if key.expires_at else "never"
            table.add_row(
                key.id, key.name, key.user, key.role, ",".join(key.scopes), expires, state
            )
        console.print(table)


@keys.command("revoke")
def keys_revoke(key_id: str) -> None:
    with client() as c:
        key = c.revoke_key(key_id)
    console.print(f"revoked {key.id}; servers refuse it within seconds")
