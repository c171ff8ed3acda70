// Audit: the log with filters and export; "verify chain" (operators); residency reports:
// generate, download the signed file, and verify a report file here in the browser
// against the platform's public key.

import { api, can, me } from "./app.js";
import { badge, download, errorBox, field, h, notice, section, select, table, when } from "./ui.js";
import { verifySigned } from "./verify.js";

export async function auditPage(page) {
  page.append(await eventLog());
  if (can("platform")) page.append(chainCheck());
  page.append(await residency(), verifier());
}

async function eventLog() {
  const action = h("input", { name: "action", placeholder: "e.g. key.create", maxlength: 64 });
  const since = h("input", { name: "from", type: "date" });
  const until = h("input", { name: "to", type: "date" });
  const list = h("div", { id: "audit-events" });
  const more = h("button", { type: "button", class: "small" }, "More");
  const exportLink = h("a", { class: "button small", id: "audit-export", download: "audit.jsonl" }, "Export JSON lines");
  let after = 0;
  let rows = [];
  const query = () => {
    const q = new URLSearchParams({ limit: "200" });
    if (action.value.trim()) q.set("action", action.value.trim());
    if (since.value) q.set("from", `${since.value}T00:00:00Z`);
    if (until.value) q.set("to", `${until.value}T23:59:59Z`);
    return q;
  };
  const load = async (reset) => {
    if (reset) [after, rows] = [0, []];
    const q = query();
    q.set("after_seq", String(after));
    const found = await api(`/api/audit?${q}`);
    rows = rows.concat(found.events);
    after = found.next_after_seq;
    more.hidden = found.events.length < 200;
    const exported = query();
    exported.set("format", "jsonl");
    exported.set("limit", "10000");
    exportLink.href = `/api/audit?${exported}`;
    list.replaceChildren(eventTable(rows));
    list.dataset.query = query().toString(); // what the table shows, for people and tests alike
  };
  const form = h("form", { class: "inline", id: "audit-filter" }, field("action", action), field("from", since), field("to", until), h("button", { type: "submit" }, "Filter"), exportLink);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load(true).catch((error) => list.replaceChildren(errorBox(error)));
  });
  more.addEventListener("click", () => load(false));
  await load(true);
  return section("Audit log", form, list, more);
}

function eventTable(rows) {
  return table(
    [
      { label: "seq", num: true, key: "seq" },
      { label: "time", cell: (e) => when(e.time) },
      { label: "actor", cell: (e) => [e.actor_type === "service_account" ? badge("service account") : e.actor_type, e.actor_id ? ` ${e.actor_id}` : "", e.actor_key_id ? h("div", { class: "muted small" }, `key ${e.actor_key_id}`) : null] },
      { label: "action", cell: (e) => h("code", {}, e.action) },
      { label: "target", cell: (e) => (e.target_type ? `${e.target_type} ${e.target_id ?? ""}` : "—") },
      { label: "outcome", key: "outcome" },
      { label: "details", cell: (e) => (e.details ? h("code", { class: "small" }, typeof e.details === "string" ? e.details : JSON.stringify(e.details)) : "") },
    ],
    rows,
    { empty: "No event matches.", id: "audit-table" },
  );
}

function chainCheck() {
  const result = h("div", { id: "chain-result" });
  const button = h("button", { type: "button", id: "verify-chain" }, "Verify chain");
  button.addEventListener("click", async () => {
    button.disabled = true;
    result.replaceChildren(h("p", { class: "muted" }, "Recomputing every event's hash and checking every seal…"));
    try {
      const verdict = await api("/api/audit/verify");
      const summary = `${verdict.events} events (seq ${verdict.first_seq ?? "–"}–${verdict.last_seq ?? "–"}), ${verdict.seals} seals, last sealed seq ${verdict.last_sealed_seq ?? "–"}, key ${verdict.key_id}`;
      result.replaceChildren(notice(`${verdict.ok ? "Intact" : "TAMPERED"}: ${summary}`, verdict.ok ? "ok" : "bad"));
      if (verdict.problems.length) result.append(h("ul", {}, verdict.problems.map((p) => h("li", {}, p))));
    } catch (error) {
      result.replaceChildren(errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
  return section("Chain", h("p", { class: "muted" }, "Recomputes the hash chain and checks each Ed25519 seal, as `souverain audit verify` does with a key you trust."), button, result);
}

async function residency() {
  const orgs = me().org ? [me().org] : (await api("/api/orgs")).map((o) => o.name);
  const org = select("org", orgs, orgs[0]);
  const today = new Date().toISOString().slice(0, 10);
  const start = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), 1)).toISOString().slice(0, 10);
  const since = h("input", { type: "date", name: "report-from", value: start });
  const until = h("input", { type: "date", name: "report-to", value: today });
  const result = h("div", { id: "report-result" });
  const form = h("form", { class: "inline", id: "residency-form" }, field("organisation", org), field("from", since), field("to (included)", until), h("button", { type: "submit" }, "Generate report"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const to = new Date(`${until.value}T00:00:00Z`);
    to.setUTCDate(to.getUTCDate() + 1);
    const q = new URLSearchParams({ from: `${since.value}T00:00:00Z`, to: to.toISOString() });
    try {
      const response = await api(`/api/orgs/${encodeURIComponent(org.value)}/reports/residency?${q}`, { raw: true });
      if (!response.ok) throw new Error((await response.json()).error?.message || response.statusText);
      const text = await response.text(); // saved byte for byte: the signature covers its numbers as written
      const report = JSON.parse(text).document;
      const name = `residency-${org.value}-${since.value}-${until.value}.json`;
      result.replaceChildren(
        notice(`${report.compliant ? "Compliant" : "NOT compliant"}: ${report.records.count} requests in the period`, report.compliant ? "ok" : "bad"),
        h("button", { type: "button", id: "download-report", onclick: () => download(name, text) }, "Download signed report"),
      );
    } catch (error) {
      result.replaceChildren(errorBox(error));
    }
  });
  return section("Residency report", h("p", { class: "muted" }, "Where each request and file of the organisation was processed and stored, checked against the policy in force at the time, signed by the platform."), form, result);
}

function verifier() {
  const file = h("input", { type: "file", accept: ".json,application/json", id: "report-file" });
  const result = h("div", { id: "verify-result" });
  file.addEventListener("change", async () => {
    const chosen = file.files[0];
    if (!chosen) return;
    try {
      const key = await api("/api/signing-key");
      const verdict = await verifySigned(await chosen.text(), key.public_key_pem);
      result.replaceChildren(notice(`${verdict.ok ? "Valid" : "Invalid"}: ${verdict.reason}${verdict.keyId ? ` (platform key ${verdict.keyId})` : ""}`, verdict.ok ? "ok" : "bad"));
    } catch (error) {
      result.replaceChildren(errorBox(error));
    }
  });
  return section("Verify a report", h("p", { class: "muted" }, "Checks the file's Ed25519 signature here, in your browser, against the platform's public key; the file is not sent anywhere."), field("signed report (.json)", file), result);
}
