// The console's shell: sign-in, the session, the navigation and the API client.
//
// The API key is read from the sign-in form, sent once in the Authorization header of
// POST /console/session, and dropped: the browser keeps only the HttpOnly session cookie
// (unreadable here) and, in memory, the CSRF token every change must carry.

import { h, errorBox, field } from "./ui.js";
import { overview } from "./overview.js";
import { deploymentsPage } from "./deployments.js";
import { modelsPage } from "./models.js";
import { usagePage } from "./usage.js";
import { jobsPage } from "./jobs.js";
import { auditPage } from "./audit.js";
import { keysPage } from "./keys.js";
import { playground } from "./playground.js";

const session = { csrf: null, header: "X-CSRF-Token", me: null };

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The one way the pages talk to souverain: same-origin fetch on the session cookie.
export async function api(path, { method = "GET", body, headers = {}, raw = false } = {}) {
  const init = { method, credentials: "same-origin", headers: { ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  if (method !== "GET" && session.csrf) init.headers[session.header] = session.csrf;
  const response = await fetch(path, init);
  if (response.status === 401 && path !== "/console/session") {
    signedOut("Your session has ended. Sign in again.");
    throw new ApiError(401, "Signed out.", "invalid_api_key");
  }
  if (raw) return response;
  if (!response.ok) throw await apiError(response);
  return response.status === 204 ? null : response.json();
}

export async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  let code;
  try {
    const body = await response.json();
    const error = body.error || body;
    message = typeof error.message === "string" ? error.message : JSON.stringify(body.detail || body);
    code = error.code;
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(response.status, message, code);
}

export function me() {
  return session.me;
}

export function can(scope) {
  return Boolean(session.me && session.me.scopes.includes(scope));
}

// Pages by route: who sees each (a scope), its title and how it renders.
const PAGES = [
  { path: "overview", title: "Overview", scope: "read", render: overview },
  { path: "deployments", title: "Deployments", scope: "read", render: deploymentsPage },
  { path: "models", title: "Models", scope: "read", render: modelsPage },
  { path: "usage", title: "Usage & billing", scope: "read", render: usagePage },
  { path: "jobs", title: "Jobs", scope: "inference", render: jobsPage },
  { path: "audit", title: "Audit", scope: "audit", render: auditPage },
  { path: "keys", title: "Keys & members", scope: "read", render: keysPage },
  { path: "playground", title: "Playground", scope: "inference", render: playground },
];

let stopPage = null; // a page's timers stop when the page is left

async function route() {
  if (stopPage) stopPage();
  stopPage = null;
  const view = document.getElementById("view");
  if (!session.me) return;
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const page = PAGES.find((p) => p.path === name && can(p.scope)) || PAGES[0];
  if (page.path !== name) {
    history.replaceState(null, "", `#/${page.path}`);
  }
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === page.path);
  }
  document.title = `${page.title} · souverain`;
  const body = h("div", { class: "page", id: `page-${page.path}` }, h("h1", {}, page.title));
  view.replaceChildren(body);
  try {
    const stop = await page.render(body, rest.map(decodeURIComponent));
    if (typeof stop === "function") stopPage = stop;
  } catch (error) {
    if (error.status !== 401) body.append(errorBox(error));
  }
}

function renderNav() {
  const nav = document.getElementById("nav");
  nav.replaceChildren(...PAGES.filter((p) => can(p.scope)).map((p) => h("a", { href: `#/${p.path}`, dataset: { page: p.path } }, p.title)));
  const who = document.getElementById("who");
  const m = session.me;
  who.replaceChildren(
    h("span", { id: "whoami" }, `${m.user} · ${m.role}${m.org ? ` · ${m.org}` : ""}`),
    h("button", { type: "button", id: "sign-out", class: "link", onclick: signOut }, "Sign out"),
  );
}

function signedOut(message) {
  session.me = null;
  session.csrf = null;
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  showSignIn(message);
}

// Why a single sign-on came back without a session (the callback's ?sso_error=): a fixed
// table, so nothing from the URL is shown as it was written.
const SSO_ERRORS = {
  no_role: "Your groups give you no role there. Ask the organisation's owner.",
  name_taken: "Your provider named a user that belongs to another account.",
  deactivated: "Your account is deactivated in the organisation's directory.",
  provider_unavailable: "The identity provider did not answer. Try again.",
};

function ssoProblem() {
  const reason = new URLSearchParams(location.search).get("sso_error");
  if (!reason) return null;
  history.replaceState(null, "", `/console${location.hash}`);
  return SSO_ERRORS[reason] || "Single sign-on was refused. Begin again.";
}

function ssoForm() {
  const org = h("input", { name: "org", autocomplete: "organization", maxlength: 64, placeholder: "organisation (empty: platform operators)", spellcheck: "false" });
  const form = h("form", { id: "sso", class: "card narrow" }, h("h2", {}, "Single sign-on"), h("p", { class: "muted" }, "Sign in with your organisation's identity provider."), field("Organisation", org), h("button", { type: "submit" }, "Continue with your organisation"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (org.value.trim()) query.set("org", org.value.trim());
    if (/^#\/[A-Za-z0-9/_.-]{0,150}$/.test(location.hash)) query.set("return_to", `/console${location.hash}`);
    location.assign(`/console/sso/start?${query}`);
  });
  return form;
}

function showSignIn(message) {
  message = message || ssoProblem();
  const key = h("input", { name: "key", type: "password", autocomplete: "off", placeholder: "sk-souv-…", required: true, spellcheck: "false" });
  const status = h("div", { id: "sign-in-status" }, message ? h("p", { class: "notice" }, message) : null);
  const form = h(
    "form",
    { id: "sign-in", class: "card narrow" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use an API key. It is exchanged for a session of this browser and never stored in it."),
    field("API key", key),
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const secret = key.value.trim();
    key.value = "";
    const response = await fetch("/console/session", { method: "POST", credentials: "same-origin", headers: { Authorization: `Bearer ${secret}` } });
    if (!response.ok) {
      status.replaceChildren(errorBox(await apiError(response)));
      return;
    }
    adopt(await response.json());
    await start();
  });
  document.getElementById("view").replaceChildren(form, ssoForm());
  key.focus();
}

function adopt(view) {
  session.csrf = view.csrf_token;
  session.header = view.csrf_header;
}

async function signOut() {
  await api("/console/session", { method: "DELETE" }).catch(() => null);
  history.replaceState(null, "", "#/overview");
  signedOut("Signed out.");
}

async function start() {
  session.me = await api("/api/me");
  renderNav();
  await route();
}

async function boot() {
  const response = await fetch("/console/session", { credentials: "same-origin" });
  if (!response.ok) {
    showSignIn();
    return;
  }
  adopt(await response.json());
  await start();
}

window.addEventListener("hashchange", route);
boot();
