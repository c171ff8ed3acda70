// Usage and billing: tokens, requests, cost, energy and CO2e over time and by model,
// project, key, datacenter and language consistency; budgets with what is left; the
// month's invoice; CSV export. Every figure is what /api/usage answers, shown as is.

import { api, me } from "./app.js";
import { barChart, euros, field, h, kwh, num, qty, section, select, table, tree } from "./ui.js";

const METRICS = {
  tokens: { label: "tokens", unit: "tokens", of: (g) => g.prompt_tokens + g.completion_tokens },
  requests: { label: "requests", unit: "requests", of: (g) => g.requests },
  cost: { label: "cost", unit: "EUR", of: (g) => g.cost },
  energy: { label: "energy", unit: "kWh", of: (g) => g.energy_j / 3.6e6 },
  co2e: { label: "CO2e", unit: "g", of: (g) => g.co2e_g },
};
const PERIODS = [["month", "this month"], ["7", "last 7 days"], ["30", "last 30 days"], ["365", "last 12 months"]];
const BREAKDOWNS = ["model", "project", "key", "datacenter", "language"];

export async function usagePage(page) {
  const period = select("period", PERIODS, "month");
  const metric = select("metric", Object.keys(METRICS).map((k) => [k, METRICS[k].label]), "tokens");
  const body = h("div", { id: "usage-body" });
  const exportLink = h("a", { class: "button small", id: "usage-csv", download: "usage.csv" }, "Export CSV");
  const draw = async () => {
    const since = periodStart(period.value);
    exportLink.href = `/api/usage?format=csv&limit=100000&from=${encodeURIComponent(since)}`;
    body.replaceChildren(await report(since, metric.value));
  };
  period.addEventListener("change", draw);
  metric.addEventListener("change", draw);
  page.append(h("div", { class: "toolbar" }, field("period", period), field("chart", metric), exportLink), body);
  await draw();
  if (me().org) page.append(await budgets(me().org), await invoice(me().org));
}

function periodStart(value) {
  const now = new Date();
  if (value === "month") return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString();
  return new Date(now.getTime() - Number(value) * 86400e3).toISOString();
}

async function report(since, metricName) {
  const query = (group) => api(`/api/usage?group_by=${group}&limit=0&from=${encodeURIComponent(since)}`);
  const [days, ...breakdowns] = await Promise.all([query("day"), ...BREAKDOWNS.map(query)]);
  const metric = METRICS[metricName];
  const total = totals(days.groups);
  return h(
    "div",
    {},
    section("Totals", totalsList(total)),
    days.startup ? section("Starts of your own deployments", startupList(days.startup)) : null,
    section(`${metric.label} by day`, barChart(days.groups.map((g) => ({ label: g.key, value: metric.of(g) })), { unit: metric.unit, id: "usage-chart" })),
    BREAKDOWNS.map((name, i) => section(`By ${name}`, name === "language" ? languageTable(breakdowns[i].groups) : groupTable(name, breakdowns[i].groups))),
  );
}

function totals(groups) {
  const sum = (f) => groups.reduce((acc, g) => acc + f(g), 0);
  return {
    requests: sum((g) => g.requests),
    prompt_tokens: sum((g) => g.prompt_tokens),
    completion_tokens: sum((g) => g.completion_tokens),
    cost: sum((g) => g.cost),
    energy_j: sum((g) => g.energy_j),
    co2e_g: sum((g) => g.co2e_g),
  };
}

function totalsList(t) {
  const item = (name, label, text) => h("div", { class: "stat", dataset: { stat: name, value: t[name] } }, h("div", { class: "stat-value" }, text), h("div", { class: "muted" }, label));
  return h(
    "div",
    { class: "stats", id: "usage-totals" },
    item("requests", "requests", num(t.requests)),
    item("prompt_tokens", "prompt tokens", num(t.prompt_tokens)),
    item("completion_tokens", "completion tokens", num(t.completion_tokens)),
    item("cost", "cost", euros(t.cost)),
    item("energy_j", "energy (kWh)", kwh(t.energy_j)),
    item("co2e_g", "CO2e (g)", qty(t.co2e_g, 4)),
  );
}

// Replicas' starts (placement to first ready) are the deployment owner's, apart from the
// requests' energy above; /api/usage gives them to those who see the whole organisation.
function startupList(s) {
  const item = (name, label, value, text) => h("div", { class: "stat", dataset: { stat: name, value } }, h("div", { class: "stat-value" }, text), h("div", { class: "muted" }, label));
  return h(
    "div",
    { class: "stats", id: "usage-startup" },
    item("starts", "replica starts", s.starts, num(s.starts)),
    item("startup_energy_j", "start-up energy (kWh)", s.energy_j, kwh(s.energy_j)),
    item("startup_co2e_g", "start-up CO2e (g)", s.co2e_g, qty(s.co2e_g, 4)),
    item("startup_cpu_s", "start-up CPU (s)", s.cpu_s, qty(s.cpu_s, 1)),
  );
}

function groupTable(name, groups) {
  return table(
    [
      { label: name, cell: (g) => h("code", {}, g.key) },
      { label: "requests", num: true, key: "requests", cell: (g) => num(g.requests) },
      { label: "prompt tokens", num: true, cell: (g) => num(g.prompt_tokens) },
      { label: "completion tokens", num: true, cell: (g) => num(g.completion_tokens) },
      { label: "cost (EUR)", num: true, cell: (g) => qty(g.cost, 4) },
      { label: "energy (kWh)", num: true, cell: (g) => kwh(g.energy_j) },
      { label: "CO2e (g)", num: true, cell: (g) => qty(g.co2e_g, 4) },
    ],
    groups,
    { empty: "No usage in this period.", id: `usage-by-${name}` },
  );
}

function languageTable(groups) {
  return table(
    [
      { label: "model · prompt language", cell: (g) => h("code", {}, g.key) },
      { label: "reasoning requests", num: true, cell: (g) => num(g.requests) },
      { label: "compared", num: true, cell: (g) => num(g.language_tagged) },
      { label: "one language throughout", num: true, cell: (g) => num(g.language_consistent) },
      { label: "consistency", num: true, cell: (g) => (g.language_consistency === null ? "—" : `${num(g.language_consistency * 100, 1)} %`) },
    ],
    groups,
    { empty: "No reasoning request in this period.", id: "usage-by-language" },
  );
}

async function budgets(org) {
  let found;
  try {
    found = await api(`/api/orgs/${encodeURIComponent(org)}/budgets`);
  } catch (error) {
    return section("Budgets", h("p", { class: "muted" }, error.message));
  }
  const left = (limit, used) => (limit === null ? "no limit" : `${num(Math.max(limit - used, 0), 4)} left of ${num(limit, 4)}`);
  return section(
    "Budgets",
    table(
      [
        { label: "scope", cell: (b) => (b.project_id ? `project ${b.project_id}` : "organisation") },
        { label: "period", key: "period" },
        { label: "tokens", cell: (b) => left(b.tokens, b.used_tokens + b.reserved_tokens) },
        { label: "cost (EUR)", cell: (b) => left(b.cost, b.used_cost) },
        { label: "energy (kWh)", cell: (b) => left(b.energy_kwh, b.used_energy_kwh) },
        { label: "used", cell: (b) => h("meter", { min: 0, max: 1, value: usedShare(b) }) },
      ],
      found,
      { empty: "No budget is set.", id: "budgets" },
    ),
  );
}

function usedShare(b) {
  const shares = [];
  if (b.tokens) shares.push((b.used_tokens + b.reserved_tokens) / b.tokens);
  if (b.cost) shares.push(b.used_cost / b.cost);
  if (b.energy_kwh) shares.push(b.used_energy_kwh / b.energy_kwh);
  return Math.min(Math.max(0, ...shares), 1);
}

async function invoice(org) {
  const period = new Date().toISOString().slice(0, 7);
  const box = h("div", { id: "invoice" });
  const show = async (month) => {
    try {
      box.replaceChildren(tree(await api(`/api/orgs/${encodeURIComponent(org)}/invoices/${month}`)));
    } catch (error) {
      box.replaceChildren(h("p", { class: "muted" }, error.message));
    }
  };
  const month = h("input", { type: "month", value: period, name: "invoice-period" });
  month.addEventListener("change", () => show(month.value));
  await show(period);
  return section("Invoice", field("month", month), box);
}
