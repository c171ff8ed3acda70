// Overview: datacenters by country with their jurisdictions, certifications and this
// hour's grid carbon intensity; nodes (operators); replicas per datacenter; and, for a
// tenant, the countries its requests were processed in this month.

import { api, can, me } from "./app.js";
import { badge, h, monthStart, num, section, table } from "./ui.js";

export async function overview(page) {
  const [datacenters, deployments, usage] = await Promise.all([
    api("/api/datacenters"),
    api("/api/deployments"),
    api(`/api/usage?group_by=datacenter&limit=0&from=${encodeURIComponent(monthStart())}`),
  ]);
  const nodes = can("platform") ? await api("/api/nodes") : null;
  const replicas = replicasByDatacenter(deployments);
  page.append(processedIn(datacenters, usage.groups), section("Datacenters", countryMap(datacenters, replicas, nodes)));
  if (nodes) page.append(section("Nodes", nodeTable(nodes)));
}

function replicasByDatacenter(deployments) {
  const counts = {};
  for (const deployment of deployments) {
    for (const replica of deployment.replica_details) {
      const entry = (counts[replica.datacenter_id] ??= { ready: 0, other: 0 });
      if (replica.state === "ready") entry.ready += 1;
      else entry.other += 1;
    }
  }
  return counts;
}

function processedIn(datacenters, groups) {
  const country = Object.fromEntries(datacenters.map((dc) => [dc.id, dc.country]));
  const byCountry = {};
  for (const group of groups) {
    const where = country[group.key] || "unknown";
    byCountry[where] = (byCountry[where] || 0) + group.requests;
  }
  const who = me().org ? `Requests of ${me().org}` : "Requests on the platform";
  const entries = Object.entries(byCountry).sort((a, b) => b[1] - a[1]);
  return section(
    `${who} this month were processed in`,
    entries.length
      ? h("ul", { class: "countries", id: "processed-in" }, entries.map(([c, n]) => h("li", { dataset: { country: c } }, h("strong", {}, c), ` ${num(n)} request${n === 1 ? "" : "s"}`)))
      : h("p", { class: "muted", id: "processed-in" }, "No requests yet this month."),
  );
}

// A schematic map: one tile per country, its datacenters inside, greener where the grid
// emits less.
function countryMap(datacenters, replicas, nodes) {
  if (!datacenters.length) return h("p", { class: "muted" }, "No datacenter is declared.");
  const byCountry = {};
  for (const dc of datacenters) (byCountry[dc.country] ??= []).push(dc);
  const nodesOf = (id) => (nodes || []).filter((n) => n.datacenter_id === id);
  return h(
    "div",
    { class: "map", id: "datacenter-map" },
    Object.entries(byCountry).sort().map(([country, dcs]) =>
      h(
        "div",
        { class: "country", dataset: { country } },
        h("h3", {}, country, " ", h("small", { class: "muted" }, dcs[0].jurisdictions.join(" · "))),
        dcs.map((dc) => datacenterTile(dc, replicas[dc.id], nodes ? nodesOf(dc.id) : null)),
      ),
    ),
  );
}

function datacenterTile(dc, replicas, nodes) {
  const intensity = dc.carbon_intensity_now ?? dc.carbon_intensity;
  const grade = intensity < 100 ? "low" : intensity < 300 ? "mid" : "high";
  return h(
    "div",
    { class: `dc ${grade}`, dataset: { datacenter: dc.id } },
    h("div", { class: "dc-name" }, h("strong", {}, dc.name), " ", h("code", {}, dc.id)),
    h("div", {}, `operated by ${dc.operator_name} (${dc.operator_country})`),
    h("div", {}, dc.certifications.length ? dc.certifications.map((c) => badge(c)) : h("span", { class: "muted" }, "no certification")),
    h("div", { class: "carbon" }, `${num(intensity, 0)} gCO2e/kWh now`, intensity !== dc.carbon_intensity ? h("small", { class: "muted" }, ` (declared ${num(dc.carbon_intensity, 0)})`) : null),
    h("div", {}, `replicas: ${replicas ? replicas.ready : 0} ready${replicas && replicas.other ? `, ${replicas.other} not ready` : ""}`),
    nodes ? h("div", {}, `nodes: ${nodes.filter((n) => n.alive).length} alive / ${nodes.length}`) : null,
  );
}

function nodeTable(nodes) {
  return table(
    [
      { label: "node", cell: (n) => h("code", {}, n.id.slice(0, 12)) },
      { label: "datacenter", key: "datacenter_id" },
      { label: "address", key: "address" },
      { label: "state", cell: (n) => badge(n.alive ? "alive" : "gone", n.alive ? "ok" : "bad") },
      { label: "CPU free / total", num: true, cell: (n) => `${num(n.available.CPU ?? 0, 1)} / ${num(n.resources.CPU ?? 0, 1)}` },
      { label: "GPU free / total", num: true, cell: (n) => `${num(n.available.GPU ?? 0)} / ${num(n.resources.GPU ?? 0)}` },
    ],
    nodes,
    { empty: "No node has joined.", id: "nodes" },
  );
}
