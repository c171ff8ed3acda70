// Deployments: status with the scheduler's reasons, replicas with their datacenter,
// restarts and failures, the adapters a shared replica holds with their requests and
// energy (yours one by one, the rest as one total), what its starts cost (its owners');
// create, scale and delete for those who manage.

import { api, can, me } from "./app.js";
import { errorBox, field, h, notice, num, qty, section, select, stateBadge, table, when } from "./ui.js";

export async function deploymentsPage(page, [preset]) {
  const list = h("div", { id: "deployment-list" });
  let usage = { at: 0, of: new Map() }; // read again every 30 s, not at every refresh
  const refresh = async () => {
    const deployments = await api("/api/deployments");
    const stale = Date.now() - usage.at > 30000 || deployments.some((d) => wantsUsage(d) && !usage.of.has(d.id));
    if (stale) usage = { at: Date.now(), of: await usageOf(deployments) };
    list.replaceChildren(deploymentTable(deployments, usage.of, refresh));
  };
  await refresh();
  if (can("manage")) page.append(await createForm(refresh, preset));
  page.append(section("Deployments", list));
  const timer = setInterval(() => refresh().catch(() => null), 5000);
  return () => clearInterval(timer);
}

// The last day's usage of the deployments where sharing makes it worth a look: shared ones,
// and those whose replicas hold adapters of yours.
function wantsUsage(d) {
  return d.sharing === "shared" || d.adapters > 0;
}

async function usageOf(deployments) {
  const wanted = deployments.filter(wantsUsage);
  const found = await Promise.all(wanted.map((d) => api(`/api/deployments/${encodeURIComponent(d.id)}/usage`).catch(() => null)));
  return new Map(wanted.map((d, i) => [d.id, found[i]]));
}

function deploymentTable(deployments, usage, refresh) {
  const names = new Map(deployments.map((d) => [d.id, d.model]));
  return table(
    [
      { label: "name", cell: (d) => h("strong", {}, d.name) },
      { label: "model", key: "model" },
      { label: "engine", cell: engineOf },
      { label: "replicas", num: true, cell: (d) => `${d.ready_replicas} / ${d.replicas}` + (d.autoscaling ? ` (${d.min_replicas}–${d.max_replicas})` : "") },
      { label: "serves", cell: (d) => serves(d, usage.get(d.id)) },
      { label: "status", cell: (d) => [stateBadge(d.status), d.status_reason ? h("div", { class: "reason" }, d.status_reason) : null, d.scaling_reason ? h("div", { class: "reason" }, `last scaling: ${d.scaling_reason}`) : null] },
      { label: "where", cell: (d) => (d.datacenters.length ? d.datacenters.join(", ") : d.jurisdictions ? d.jurisdictions.join(", ") : "any allowed") },
      { label: "replica details", cell: (d) => replicaList(d, usage.get(d.id), names) },
      { label: "start-up", cell: startupOf },
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

// What its replicas' starts cost (placement to first ready): its organisation's to know,
// so the API gives it to its owners and operators only (null for anyone else).
function startupOf(d) {
  const s = d.startup;
  if (!s) return null;
  if (!s.last) return h("span", { class: "muted" }, "no start yet");
  const cpu = s.last.cpu_s === null ? "CPU time not reported" : `${qty(s.last.cpu_s, 1)} CPU s`;
  return h(
    "div",
    { class: "small", dataset: { startup: d.name } },
    `last: ${qty(s.last.wall_s, 1)} s, ${cpu}, ${qty(s.last.energy_wh, 4)} Wh`,
    h("div", { class: "muted" }, `${num(s.starts)} start${s.starts === 1 ? "" : "s"}: ${qty(s.energy_wh, 4)} Wh`),
  );
}

function engineOf(d) {
  const replica = d.replica_details.find((r) => r.runtime);
  return replica ? `${d.engine} (${replica.runtime}${replica.slots ? ` ×${replica.slots}` : ""})` : d.engine;
}

function serves(d, usage) {
  const kind = d.sharing === "shared" ? "shared (on its base's replicas)" : d.adapters ? `dedicated, +${d.adapters} adapter(s)` : "dedicated";
  if (d.sharing !== "shared" || !usage) return kind;
  return [kind, h("div", { class: "muted small", dataset: { usage: d.name } }, `last 24 h: ${used(usage)}`)];
}

// Requests, tokens and energy: measured once the replica's energy interval has closed.
function used(u) {
  const wh = `${qty(u.energy_wh, 4)} Wh${u.energy_estimated ? " (partly estimated)" : ""}`;
  return `${num(u.requests)} request${u.requests === 1 ? "" : "s"}, ${num(u.prompt_tokens + u.completion_tokens)} tokens, ${wh}`;
}

// A shared replica's adapters (yours), each with its state and the last day's usage;
// nothing of other organisations' use of the replica.
function adapterList(r, usage, names) {
  const mine = (usage?.replicas ?? []).find((u) => u.replica_id === r.id);
  if (!r.adapters.length) return null;
  return h(
    "ul",
    { class: "adapters small" },
    r.adapters.map((a) => {
      const u = mine?.adapters.find((x) => x.model_id === a.model_id);
      return h(
        "li",
        { dataset: { adapter: a.model_id } },
        h("code", {}, u ? names.get(u.deployment_id) ?? a.model_id : a.model_id),
        ` ${a.state}${a.error ? `: ${a.error}` : ""}`,
        usage ? h("span", { class: "muted" }, ` · ${used(u ?? { requests: 0, prompt_tokens: 0, completion_tokens: 0, energy_wh: 0 })} (24 h)`) : null,
      );
    }),
  );
}

function replicaList(d, usage, names) {
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
        adapterList(r, usage, names),
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
