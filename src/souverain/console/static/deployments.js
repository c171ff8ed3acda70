// Deployments: status with the scheduler's reasons, replicas with their datacenter,
// restarts and failures; create, scale and delete for those who manage.

import { api, can, me } from "./app.js";
import { errorBox, field, h, notice, section, select, stateBadge, table, when } from "./ui.js";

export async function deploymentsPage(page, [preset]) {
  const list = h("div", { id: "deployment-list" });
  const refresh = async () => list.replaceChildren(deploymentTable(await api("/api/deployments"), refresh));
  await refresh();
  if (can("manage")) page.append(await createForm(refresh, preset));
  page.append(section("Deployments", list));
  const timer = setInterval(() => refresh().catch(() => null), 5000);
  return () => clearInterval(timer);
}

function deploymentTable(deployments, refresh) {
  return table(
    [
      { label: "name", cell: (d) => h("strong", {}, d.name) },
      { label: "model", key: "model" },
      { label: "engine", cell: engineOf },
      { label: "replicas", num: true, cell: (d) => `${d.ready_replicas} / ${d.replicas}` + (d.autoscaling ? ` (${d.min_replicas}–${d.max_replicas})` : "") },
      { label: "serves", cell: (d) => (d.sharing === "shared" ? "shared (on its base's replicas)" : d.adapters ? `dedicated, +${d.adapters} adapter(s)` : "dedicated") },
      { label: "status", cell: (d) => [stateBadge(d.status), d.status_reason ? h("div", { class: "reason" }, d.status_reason) : null, d.scaling_reason ? h("div", { class: "reason" }, `last scaling: ${d.scaling_reason}`) : null] },
      { label: "where", cell: (d) => (d.datacenters.length ? d.datacenters.join(", ") : d.jurisdictions ? d.jurisdictions.join(", ") : "any allowed") },
      { label: "replica details", cell: replicaList },
      { label: "", cell: (d) => (mayChange(d) ? actions(d, refresh) : null) },
    ],
    deployments,
    { empty: "No deployment yet.", id: "deployments" },
  );
}

// The platform's own deployments are the operators'; an organisation's, its admins'.
function mayChange(d) {
  return can("manage") && (can("platform") || (d.org_id !== null && d.org_id === me().org_id));
}

function engineOf(d) {
  const replica = d.replica_details.find((r) => r.runtime);
  return replica ? `${d.engine} (${replica.runtime}${replica.slots ? ` ×${replica.slots}` : ""})` : d.engine;
}

function replicaList(d) {
  if (!d.replica_details.length) return h("span", { class: "muted" }, "none");
  return h(
    "ul",
    { class: "replicas" },
    d.replica_details.map((r) =>
      h(
        "li",
        { dataset: { replica: r.id } },
        stateBadge(r.state),
        ` ${r.datacenter_id}`,
        r.engine_restarts ? h("span", { class: "warn-text" }, ` · ${r.engine_restarts} restart${r.engine_restarts > 1 ? "s" : ""}`) : null,
        r.reason ? h("div", { class: "reason" }, r.reason) : null,
        h("div", { class: "muted small" }, `since ${when(r.updated_at)}`),
      ),
    ),
  );
}

function actions(d, refresh) {
  const replicas = h("input", { type: "number", min: 0, max: 64, value: d.replicas, class: "tiny", "aria-label": `replicas of ${d.name}` });
  const status = h("span", {});
  const act = (work) => async () => {
    try {
      await work();
      await refresh();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  };
  return h(
    "div",
    { class: "actions" },
    replicas,
    h("button", { type: "button", class: "small", onclick: act(() => api(`/api/deployments/${encodeURIComponent(d.name)}`, { method: "PATCH", body: { replicas: Number(replicas.value) } })) }, "Scale"),
    h("button", {
      type: "button",
      class: "small danger",
      onclick: act(async () => {
        if (confirm(`Delete deployment ${d.name}? Its replicas stop.`)) await api(`/api/deployments/${encodeURIComponent(d.name)}`, { method: "DELETE" });
      }),
    }, "Delete"),
    status,
  );
}

async function createForm(refresh, preset) {
  const models = await api("/api/models");
  const datacenters = await api("/api/datacenters");
  const name = h("input", { name: "name", required: true, pattern: "[a-z0-9][a-z0-9\\-]{0,62}", placeholder: "my-deployment" });
  const model = select("model", models.map((m) => m.name), preset);
  const replicas = h("input", { name: "replicas", type: "number", min: 0, max: 64, value: 1 });
  const where = h("select", { name: "datacenters", multiple: true, size: Math.min(4, Math.max(datacenters.length, 2)) }, datacenters.map((dc) => h("option", { value: dc.id }, `${dc.id} (${dc.country})`)));
  const status = h("div", {});
  const form = h(
    "form",
    { id: "create-deployment", class: "inline" },
    field("name", name),
    field("model", model),
    field("replicas", replicas),
    field("datacenters (none: any your policy allows)", where),
    h("button", { type: "submit" }, "Create"),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const body = { name: name.value.trim(), model: model.value, replicas: Number(replicas.value), datacenters: [...where.selectedOptions].map((o) => o.value) };
      if (me().org) body.org = me().org; // a tenant deploys for its organisation; operators for the platform
      const created = await api("/api/deployments", { method: "POST", body });
      status.replaceChildren(notice(`Created ${created.name}: ${created.status}${created.status_reason ? ` (${created.status_reason})` : ""}`));
      await refresh();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  return section("Deploy a model", form);
}
