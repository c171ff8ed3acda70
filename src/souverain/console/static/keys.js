// Keys and members: create a key (its secret shown once), revoke, roles; members of the
// organisation; the organisation's and projects' sovereignty policies with the effective
// policy explained (ceiling ∩ project).

import { api, can, me } from "./app.js";
import { badge, errorBox, field, h, notice, section, select, table, when } from "./ui.js";
import { serviceAccounts, singleSignOn } from "./identity.js";

const ROLES = ["viewer", "auditor", "member", "admin", "owner"];

export async function keysPage(page) {
  const keys = h("div", { id: "key-list" });
  const refresh = async () => keys.replaceChildren(keyTable(await api("/api/keys"), refresh));
  await refresh();
  const org = me().org;
  const projects = org ? await api(`/api/orgs/${encodeURIComponent(org)}/projects`) : [];
  page.append(section("Create a key", keyForm(projects, refresh)), section("Keys", keys));
  if (org) {
    page.append(projectList(org, projects), await members(org), await serviceAccounts(org, projects));
    const sso = await singleSignOn(org, projects);
    if (sso) page.append(sso);
    page.append(await policies(org, projects));
  }
}

// A project's priority: `batch` makes every key of it a batch key (its requests queue
// behind interactive ones); a key is never more urgent than its project.
function projectList(org, projects) {
  const status = h("div", {});
  const cell = (p) => {
    if (!can("manage")) return badge(p.priority);
    const choice = select(`priority-${p.name}`, ["interactive", "batch"], p.priority);
    choice.addEventListener("change", async () => {
      try {
        await api(`/api/orgs/${encodeURIComponent(org)}/projects/${encodeURIComponent(p.name)}`, { method: "PATCH", body: { priority: choice.value } });
        status.replaceChildren(notice(`Project ${p.name} is now ${choice.value}.`));
      } catch (error) {
        choice.value = p.priority;
        status.replaceChildren(errorBox(error));
      }
    });
    return choice;
  };
  return section("Projects", table([{ label: "project", key: "name" }, { label: "priority", cell }], projects, { id: "projects" }), status);
}

function keyTable(keys, refresh) {
  return table(
    [
      { label: "key", cell: (k) => h("code", {}, `sk-souv-${k.id}_…`) },
      { label: "name", key: "name" },
      { label: "user", cell: (k) => (k.user.startsWith("svc:") ? badge("service account") : k.user) },
      { label: "role", cell: (k) => badge(k.role) },
      { label: "scopes", cell: (k) => k.scopes.join(", ") },
      { label: "project", cell: (k) => k.project_id || "all" },
      // the priority in effect (a batch project's keys are batch), the key's own if it differs
      { label: "priority", cell: (k) => badge(k.priority === k.priority_set ? k.priority : `${k.priority} (set ${k.priority_set})`) },
      { label: "expires", cell: (k) => when(k.expires_at) },
      { label: "state", cell: (k) => (k.revoked_at ? badge("revoked", "bad") : badge("active", "ok")) },
      { label: "", cell: (k) => (k.revoked_at || k.id === me().key_id ? null : revokeButton(k, refresh)) },
    ],
    keys,
    { id: "keys" },
  );
}

function revokeButton(key, refresh) {
  const status = h("span", {});
  const button = h("button", { type: "button", class: "small danger", dataset: { key: key.id } }, "Revoke");
  button.addEventListener("click", async () => {
    if (!confirm(`Revoke key ${key.id}? Every key it created is revoked with it.`)) return;
    try {
      await api(`/api/keys/${key.id}`, { method: "DELETE" });
      await refresh();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  return h("span", {}, button, status);
}

function keyForm(projects, refresh) {
  const mine = ROLES.slice(0, ROLES.indexOf(me().role) + 1);
  const name = h("input", { name: "key-name", maxlength: 100, placeholder: "ci-pipeline" });
  const role = select("key-role", mine.length ? mine : ROLES, mine.includes("member") ? "member" : mine[0]);
  const project = select("key-project", [["", "all projects"], ...projects.map((p) => [p.id, p.name])], "");
  const days = h("input", { name: "key-days", type: "number", min: 1, max: 3650, placeholder: "never" });
  const result = h("div", { id: "new-key" });
  const form = h("form", { class: "inline", id: "create-key" }, field("name", name), field("role", role), field("project", project), field("expires in days", days), h("button", { type: "submit" }, "Create key"), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), role: role.value };
    if (project.value) body.project = project.value;
    if (days.value) body.expires_in_days = Number(days.value);
    try {
      const created = await api("/api/keys", { method: "POST", body });
      const secret = h("code", { id: "new-key-secret", class: "secret" }, created.key);
      const copy = h("button", { type: "button", class: "small", onclick: () => navigator.clipboard?.writeText(created.key) }, "Copy");
      const hide = h("button", { type: "button", class: "small", onclick: () => result.replaceChildren(notice("The secret is gone from this page; it cannot be shown again.")) }, "I have stored it");
      result.replaceChildren(h("div", { class: "notice ok" }, h("p", {}, "This is the only time the key is shown. Store it now:"), secret, " ", copy, " ", hide));
      await refresh();
    } catch (error) {
      result.replaceChildren(errorBox(error));
    }
  });
  return form;
}

async function members(org) {
  const list = h("div", { id: "member-list" });
  const refresh = async () => list.replaceChildren(memberTable(org, await api(`/api/orgs/${encodeURIComponent(org)}/members`), refresh));
  await refresh();
  return section("Members", list, can("manage") ? memberForm(org, refresh) : null);
}

function memberTable(org, found, refresh) {
  return table(
    [
      { label: "user", key: "user" },
      { label: "role", cell: (m) => badge(m.role) },
      { label: "since", cell: (m) => when(m.created_at) },
      { label: "", cell: (m) => (can("manage") && m.user !== me().user ? removeMember(org, m, refresh) : null) },
    ],
    found,
    { id: "members" },
  );
}

function removeMember(org, member, refresh) {
  const status = h("span", {});
  return h("span", {}, h("button", {
    type: "button",
    class: "small danger",
    onclick: async () => {
      if (!confirm(`Remove ${member.user}? Their keys in ${org} are revoked.`)) return;
      try {
        await api(`/api/orgs/${encodeURIComponent(org)}/members/${encodeURIComponent(member.user)}`, { method: "DELETE" });
        await refresh();
      } catch (error) {
        status.replaceChildren(errorBox(error));
      }
    },
  }, "Remove"), status);
}

function memberForm(org, refresh) {
  const user = h("input", { name: "member-user", required: true, maxlength: 64, placeholder: "user name" });
  const role = select("member-role", ROLES, "member");
  const status = h("div", {});
  const form = h("form", { class: "inline", id: "add-member" }, field("user", user), field("role", role), h("button", { type: "submit" }, "Add member"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api(`/api/orgs/${encodeURIComponent(org)}/members`, { method: "POST", body: { user: user.value.trim(), role: role.value } });
      status.replaceChildren(notice(`${user.value} added.`));
      await refresh();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  return form;
}

const FIELDS = [
  ["jurisdictions", "may be processed in"],
  ["datacenters", "datacenters"],
  ["certifications", "certifications required"],
  ["operator_jurisdictions", "operator headquartered in"],
];

function describe(value) {
  if (value === null || value === undefined) return "anywhere";
  if (Array.isArray(value)) return value.length ? value.join(", ") : "nothing (none allowed)";
  return String(value);
}

async function policies(org, projects) {
  const base = `/api/orgs/${encodeURIComponent(org)}`;
  const ceiling = await api(`${base}/policy`);
  const rows = await Promise.all(
    projects.map(async (p) => ({
      project: p,
      own: await api(`${base}/projects/${encodeURIComponent(p.name)}/policy`),
      effective: await api(`${base}/projects/${encodeURIComponent(p.name)}/policy?effective=true`),
    })),
  );
  return section(
    "Sovereignty policies",
    h("h3", {}, `Organisation ceiling (${org})`),
    policyList(ceiling.policy, "ceiling"),
    rows.map(({ project, own, effective }) =>
      h(
        "div",
        { class: "policy", dataset: { project: project.name } },
        h("h3", {}, `Project ${project.name}`),
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", {}, "rule"), h("th", {}, "ceiling"), h("th", {}, "project"), h("th", {}, "in effect (ceiling ∩ project)"))),
          h("tbody", {}, FIELDS.map(([key, label]) => h("tr", {}, h("td", {}, label), h("td", {}, describe(ceiling.policy[key])), h("td", {}, describe(own.policy[key])), h("td", { dataset: { effective: key } }, h("strong", {}, describe(effective.policy[key])))))),
        ),
      ),
    ),
  );
}

function policyList(policy, id) {
  return h("dl", { class: "tree", id: `policy-${id}` }, FIELDS.map(([key, label]) => [h("dt", {}, label), h("dd", {}, describe(policy[key]))]), h("dt", {}, "prompts kept"), h("dd", {}, policy.retention_days ? `${policy.retention_days} days` : "not kept"));
}
