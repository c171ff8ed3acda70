// Building blocks of the console's pages: DOM elements from data (text only, never
// markup: nothing a tenant wrote is ever parsed as HTML), tables, forms and SVG charts.

const SVG = "http://www.w3.org/2000/svg";

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

export function table(columns, rows, { empty = "Nothing yet.", id } = {}) {
  if (!rows.length) return h("p", { class: "muted", id }, empty);
  return h(
    "table",
    { id },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label)))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : "", dataset: { col: c.key || c.label } }, c.cell ? c.cell(row) : row[c.key]))),
      ),
    ),
  );
}

export function field(label, input) {
  return h("label", { class: "field" }, h("span", {}, label), input);
}

export function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map((o) => {
      const [v, text] = Array.isArray(o) ? o : [o, o];
      return h("option", { value: v, selected: v === value }, text);
    }),
  );
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

export function stateBadge(state) {
  const kind = { ready: "ok", running: "ok", succeeded: "ok", completed: "ok", intact: "ok",
    pending: "warn", degraded: "warn", queued: "warn", validating_files: "warn", in_progress: "warn",
    starting: "warn", paused: "warn", draining: "warn", failed: "bad", cancelled: "", stopped: "" }[state] ?? "";
  return badge(state, kind);
}

export function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error.message || String(error));
}

export function notice(text, kind = "ok") {
  return h("p", { class: `notice ${kind}`, role: "status" }, text);
}

export function num(value, digits = 0) {
  if (value === null || value === undefined) return "—";
  return Number(value).toLocaleString("en-GB", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

// Small quantities (a request's kWh, grams of CO2e) keep three significant digits.
export function qty(value, digits = 4) {
  if (value === null || value === undefined) return "—";
  const v = Number(value);
  return v !== 0 && Math.abs(v) < 10 ** -digits ? v.toPrecision(3) : num(v, digits);
}

export function kwh(joules) {
  return qty((joules || 0) / 3.6e6, 6);
}

export function euros(value, currency = "EUR") {
  return `${qty(value, 4)} ${currency}`;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

export function monthStart(date = new Date()) {
  return new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), 1)).toISOString();
}

export function download(name, text, type = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// A bar chart of (label, value) pairs, in SVG, with the value as each bar's title.
export function barChart(points, { unit = "", height = 180, id } = {}) {
  if (!points.length) return h("p", { class: "muted", id }, "No data in this period.");
  const width = Math.max(320, points.length * 36);
  const max = Math.max(...points.map((p) => p.value), 1e-12);
  const bar = (width - 40) / points.length;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height + 30}`, class: "chart", role: "img", "aria-label": `bar chart (${unit})` });
  if (id) svg.setAttribute("id", id);
  points.forEach((p, i) => {
    const barHeight = (p.value / max) * (height - 10);
    const x = 30 + i * bar;
    const rect = s("rect", { x: x + 3, y: height - barHeight, width: Math.max(bar - 6, 2), height: barHeight, class: "bar", "data-label": p.label, "data-value": p.value });
    rect.append(s("title", {}, document.createTextNode(`${p.label}: ${num(p.value, 6)} ${unit}`)));
    svg.append(rect, s("text", { x: x + bar / 2, y: height + 16, class: "tick", "text-anchor": "middle" }, document.createTextNode(p.label.slice(5))));
  });
  svg.append(s("text", { x: 2, y: 12, class: "tick" }, document.createTextNode(`${num(max, 4)} ${unit}`)));
  svg.append(s("line", { x1: 28, y1: height, x2: width, y2: height, class: "axis" }));
  return svg;
}

// Line series over a shared x axis: [{name, points: [[x, y], …]}].
export function lineChart(series, { height = 180, xLabel = "step", id } = {}) {
  const all = series.flatMap((one) => one.points);
  if (!all.length) return h("p", { class: "muted", id }, "No measurements yet.");
  const width = 480;
  const [xs, ys] = [all.map((p) => p[0]), all.map((p) => p[1])];
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => 40 + ((x - x0) / (x1 - x0 || 1)) * (width - 50);
  const sy = (y) => height - 10 - ((y - y0) / (y1 - y0 || 1)) * (height - 20);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height + 20}`, class: "chart", role: "img", "aria-label": series.map((x) => x.name).join(", ") });
  if (id) svg.setAttribute("id", id);
  series.forEach((one, i) => {
    const path = one.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    svg.append(s("path", { d: path, class: `line line${i}`, "data-series": one.name, "data-points": one.points.length }));
    svg.append(s("text", { x: width - 120, y: 14 + i * 14, class: `legend line${i}` }, document.createTextNode(one.name)));
  });
  svg.append(s("text", { x: 2, y: 12, class: "tick" }, document.createTextNode(num(y1, 3))));
  svg.append(s("text", { x: 2, y: height - 8, class: "tick" }, document.createTextNode(num(y0, 3))));
  svg.append(s("text", { x: width / 2, y: height + 16, class: "tick" }, document.createTextNode(`${xLabel} ${x0}–${x1}`)));
  return svg;
}

// Nested JSON (a model card, a report) as definition lists, text only.
export function tree(value) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "—");
  if (Array.isArray(value)) {
    if (!value.length) return h("span", { class: "muted" }, "none");
    if (value.every((v) => typeof v !== "object" || v === null)) return h("span", {}, value.join(", "));
    return h("ol", {}, value.map((v) => h("li", {}, tree(v))));
  }
  if (typeof value === "object") {
    return h("dl", { class: "tree" }, Object.entries(value).map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")), h("dd", {}, tree(v))]));
  }
  return h("span", {}, String(value));
}
