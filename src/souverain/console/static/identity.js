// Service accounts (shown apart from people) and single sign-on: the organisation's identity
// providers, the group mapping its owner edits, and its SCIM tokens. Everything a role may
// not do is refused by the API; these sections only leave out what the role cannot read.

import { api, can, me } from "./app.js";
import { badge, errorBox, field, h, notice, section, select, table, when } from "./ui.js";

const ROLES = ["viewer", "auditor", "member", "admin", "owner"];

function base(org) {
  return `/api/orgs/${encodeURIComponent(org)}`;
}

function shownOnce(label, secret) {
  return h("div", { class: "notice ok" }, h("p", {}, `${label} Store it now; it is not shown again:`), h("code", { class: "secret", id: "new-secret" }, secret));
}

export async function serviceAccounts(org, projects) {
  const list = h("div", { id: "service-account-list" });
  const status = h("div", {});
  const refresh = async () => list.replaceChildren(accountTable(org, await api(`${base(org)}/service-accounts`), refresh, status));
  await refresh();
  return section("Service accounts", h("p", { class: "muted" }, "Non-human principals with keys of their own: they are not members and keep working when the person who set them up leaves."), list, status, can("manage") ? accountForm(org, projects, refresh) : null);
}

function accountTable(org, accounts, refresh, status) {
  return table(
    [
      { label: "account", cell: (a) => h("span", {}, badge("service"), " ", a.name) },
      { label: "role", cell: (a) => badge(a.role) },
      { label: "project", cell: (a) => a.project || "all" },
      { label: "expires", cell: (a) => when(a.expires_at) },
      { label: "keys", cell: (a) => a.keys.filter((k) => !k.revoked_at).map((k) => h("div", { class: "muted" }, `sk-souv-${k.id}_… until ${k.expires_at ? when(k.expires_at) : "revoked"}`)) },
      { label: "", cell: (a) => (can("manage") ? h("span", {}, action("New key", `${base(org)}/service-accounts/${encodeURIComponent(a.name)}/keys`, {}, refresh, status), " ", action("Rotate", `${base(org)}/service-accounts/${encodeURIComponent(a.name)}/keys/rotate`, { overlap_hours: 24 }, refresh, status)) : null) },
    ],
    accounts,
    { id: "service-accounts", empty: "No service account yet." },
  );
}

function action(label, path, body, refresh, status) {
  return h("button", {
    type: "button",
    class: "small",
    dataset: { action: label.toLowerCase().replace(" ", "-") },
    onclick: async () => {
      try {
        const issued = await api(path, { method: "POST", body });
        await refresh();
        const ended = issued.previous?.length ? ` The previous keys end ${when(issued.previous[0].expires_at)}.` : "";
        status.replaceChildren(shownOnce(`New key of the account.${ended}`, issued.key));
      } catch (error) {
        status.replaceChildren(errorBox(error));
      }
    },
  }, label);
}

function accountForm(org, projects, refresh) {
  const mine = ROLES.slice(0, ROLES.indexOf(me().role) + 1);
  const name = h("input", { name: "sa-name", required: true, maxlength: 64, placeholder: "ci-pipeline" });
  const role = select("sa-role", mine.length ? mine : ROLES, mine.includes("member") ? "member" : mine[0]);
  const project = select("sa-project", [["", "all projects"], ...projects.map((p) => [p.name, p.name])], "");
  const days = h("input", { name: "sa-days", type: "number", min: 1, max: 3650, placeholder: "never" });
  const status = h("div", {});
  const form = h("form", { class: "inline", id: "create-service-account" }, field("name", name), field("role", role), field("project", project), field("expires in days", days), h("button", { type: "submit" }, "Create account"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), role: role.value };
    if (project.value) body.project = project.value;
    if (days.value) body.expires_in_days = Number(days.value);
    try {
      await api(`${base(org)}/service-accounts`, { method: "POST", body });
      status.replaceChildren(notice(`${body.name} created; give it a key.`));
      await refresh();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  return form;
}

export async function singleSignOn(org, projects) {
  if (!can("manage")) return null;
  const providers = await api(`${base(org)}/identity-providers`);
  const mapping = await api(`${base(org)}/group-mappings`);
  return section(
    "Single sign-on",
    table(
      [
        { label: "provider", key: "name" },
        { label: "issuer", cell: (p) => h("code", {}, p.issuer) },
        { label: "people sign in at", cell: (p) => h("code", {}, p.sign_in_url) },
      ],
      providers,
      { id: "identity-providers", empty: "No identity provider: the operator configures one for this organisation." },
    ),
    mappingEditor(org, projects, mapping),
    can("own") ? await scimTokens(org) : null,
  );
}

function mappingEditor(org, projects, mapping) {
  const lines = h("tbody", {});
  const status = h("div", {});
  const source = select("group-source", [["token", "the provider's group claim"], ["scim", "groups provisioned by SCIM"]], mapping.group_source);
  source.disabled = !can("own");
  const addLine = (line = { group: "", role: "member", project: null }) => {
    const remove = h("button", { type: "button", class: "small danger", onclick: () => row.remove() }, "×");
    const row = h("tr", { class: "mapping-line" },
      h("td", {}, h("input", { name: "group", value: line.group, maxlength: 255, required: true })),
      h("td", {}, select("role", ROLES, line.role)),
      h("td", {}, select("project", [["", "whole organisation"], ...projects.map((p) => [p.name, p.name])], line.project || "")),
      h("td", {}, can("own") ? remove : null));
    for (const input of row.querySelectorAll("input, select")) input.disabled = !can("own");
    lines.append(row);
  };
  mapping.lines.forEach(addLine);
  const form = h("form", { id: "group-mapping" },
    h("h3", {}, "Group mapping"),
    h("p", { class: "muted" }, "Members of a group get its role; a group no line names gives nothing. Re-read at every sign-in and session refresh."),
    field("groups come from", source),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "group"), h("th", {}, "role"), h("th", {}, "where"), h("th", {}, ""))), lines),
    can("own") ? h("p", {}, h("button", { type: "button", class: "small", onclick: () => addLine() }, "Add a line"), " ", h("button", { type: "submit" }, "Save mapping")) : null,
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { group_source: source.value, lines: [...lines.querySelectorAll("tr")].map((tr) => {
      const line = { group: tr.querySelector("[name=group]").value.trim(), role: tr.querySelector("[name=role]").value };
      const project = tr.querySelector("[name=project]").value;
      return project ? { ...line, project } : line;
    }) };
    try {
      await api(`${base(org)}/group-mappings`, { method: "PUT", body });
      status.replaceChildren(notice("Mapping saved."));
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  return form;
}

async function scimTokens(org) {
  const list = h("div", { id: "scim-token-list" });
  const status = h("div", {});
  const refresh = async () => list.replaceChildren(table(
    [
      { label: "token", cell: (t) => h("code", {}, `scim-souv-${t.id}_…`) },
      { label: "name", key: "name" },
      { label: "created", cell: (t) => when(t.created_at) },
      { label: "state", cell: (t) => (t.revoked_at ? badge("revoked", "bad") : badge("active", "ok")) },
    ],
    await api(`${base(org)}/scim-tokens`),
    { id: "scim-tokens", empty: "No SCIM token." },
  ));
  await refresh();
  const create = h("button", { type: "button", id: "create-scim-token", onclick: async () => {
    try {
      const made = await api(`${base(org)}/scim-tokens`, { method: "POST", body: { name: "directory" } });
      status.replaceChildren(shownOnce(`SCIM token for ${made.base_url}.`, made.token));
      await refresh();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  } }, "Create a SCIM token");
  return h("div", {}, h("h3", {}, "SCIM provisioning"), list, create, status);
}
