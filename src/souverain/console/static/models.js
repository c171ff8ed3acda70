// Models: the registry with provenance, the lineage of fine-tuned models, the model card
// (EU AI Act Annex XI) rendered, and a way to deploy.

import { api, can } from "./app.js";
import { badge, h, section, table, tree } from "./ui.js";

export async function modelsPage(page, [selected]) {
  const models = await api("/api/models");
  page.append(
    section(
      "Registry",
      table(
        [
          { label: "model", cell: (m) => h("a", { href: `#/models/${encodeURIComponent(m.name)}` }, m.name) },
          { label: "owner", cell: (m) => (m.owner_org_id ? "your organisation" : "platform") },
          { label: "engine", key: "engine" },
          { label: "capabilities", cell: (m) => m.capabilities.map((c) => badge(c)) },
          { label: "context", num: true, key: "context_length" },
          { label: "provenance", cell: provenance },
          { label: "", cell: (m) => (can("manage") ? h("a", { class: "button small", href: `#/deployments/${encodeURIComponent(m.name)}` }, "Deploy") : null) },
        ],
        models,
        { empty: "No model is registered.", id: "models" },
      ),
    ),
  );
  if (selected) page.append(await cardOf(selected));
}

function provenance(m) {
  return m.artifacts.map((a) =>
    h("div", { class: "small" }, h("code", {}, a.uri || a.source || "—"), a.sha256 ? h("div", { class: "muted" }, `sha256 ${a.sha256.slice(0, 16)}…`) : null),
  );
}

async function cardOf(name) {
  const card = await api(`/api/models/${encodeURIComponent(name)}/card`);
  const development = card["2_development"] || {};
  const chain = [development.design?.started_from, development.base_model?.name].filter(Boolean);
  return section(
    `Model card: ${name}`,
    h("p", { class: "muted" }, "EU AI Act, Annex XI: technical documentation of the model"),
    chain.length ? h("p", { id: "lineage" }, "Lineage: ", h("strong", {}, name), chain.map((parent) => [" ← ", h("code", {}, String(parent))])) : h("p", { id: "lineage", class: "muted" }, "Registered model (no fine-tuning lineage)."),
    h("div", { id: "model-card" }, tree(card)),
  );
}
