// The console's entry point: sign-in, the tabs a principal's roles allow, and the wiring
// between the views. Each view lives in its own module and only knows its own elements.

import { api, clearCredential, loadCredential, saveCredential } from "./api.js";
import { createClients } from "./clients.js";
import { say } from "./dom.js";
import { createPublish } from "./publish.js";
import { createStats } from "./stats.js";
import { createTail } from "./tail.js";

const $ = (id) => document.getElementById(id);

// The built-in channels (docs/protocol.md, Channels). An admin also learns the operator's
// own (hub.channels) from the stats; a principal with an allow-list gets exactly that.
const BUILTIN_CHANNELS = ["global", "pdfm", "orchestrator", "health", "system"];
const TABS = ["tail", "publish", "clients", "stats"];

const ui = {
  signin: $("signin"),
  form: $("signin-form"),
  kind: $("credential-kind"),
  secret: $("credential"),
  button: $("signin-button"),
  error: $("signin-error"),
  console: $("console"),
  session: $("session"),
  whoami: $("whoami"),
  connection: $("connection"),
  noRoles: $("no-roles"),
};

const tail = createTail({
  status: $("tail-status"),
  clientId: $("tail-client-id"),
  channels: $("tail-channels"),
  apply: $("tail-apply"),
  disconnect: $("tail-disconnect"),
  notes: $("tail-notes"),
  clearNotes: $("tail-clear-notes"),
  list: $("tail-events"),
  detail: $("event-detail"),
  filter: $("tail-filter"),
  pause: $("tail-pause"),
  buffered: $("tail-buffered"),
  bufferDropped: $("tail-buffer-dropped"),
  clear: $("tail-clear"),
});

const publish = createPublish({
  form: $("publish-form"),
  channel: $("publish-channel"),
  message: $("publish-message"),
  body: $("publish-body"),
  bodyError: $("publish-body-error"),
  submit: $("publish-submit"),
  result: $("publish-result"),
});

const clients = createClients({
  table: $("clients-table"),
  error: $("clients-error"),
  updated: $("clients-updated"),
  count: $("clients-count"),
  // The console marks its own connection: the id the tail shows.
  ownClientId: () => $("tail-client-id").textContent,
});

const stats = createStats({
  panels: {
    connections: $("stats-connections"),
    deliveries: $("stats-deliveries"),
    drops: $("stats-drops"),
    latency: $("stats-latency"),
  },
  error: $("stats-error"),
  summary: $("stats-summary"),
});

let who = null; // the signed-in principal (GET /v1/whoami), or null
let activeTab = null;

/** Which tabs a principal's roles open (docs/protocol.md, Credentials and roles). */
function allowedTabs(roles) {
  const has = (role) => roles.includes(role);
  const admin = has("admin");
  return new Set(
    [
      (admin || has("subscriber")) && "tail",
      (admin || has("publisher")) && "publish",
      admin && "clients",
      admin && "stats",
    ].filter(Boolean),
  );
}

/** The channels this principal may use, global first. */
function channelsFor(principal) {
  if (!Array.isArray(principal.channels)) return BUILTIN_CHANNELS;
  const allowed = new Set(["global", ...principal.channels]);
  return [...BUILTIN_CHANNELS.filter((name) => allowed.has(name)), ...principal.channels.filter((name) => !BUILTIN_CHANNELS.includes(name))];
}

// ---- tabs ---------------------------------------------------------------------------

function selectTab(name, { focus = false } = {}) {
  activeTab = name;
  for (const tab of TABS) {
    const selected = tab === name;
    const button = $(`tab-${tab}`);
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`view-${tab}`).hidden = !selected;
    if (selected && focus) button.focus();
  }
  syncPolling();
}

/** Clients and stats poll only while their tab is shown and the page is visible. */
function syncPolling() {
  const looking = who !== null && !document.hidden;
  clients.setActive(looking && activeTab === "clients");
  stats.setActive(looking && activeTab === "stats");
}

for (const tab of TABS) $(`tab-${tab}`).addEventListener("click", () => selectTab(tab));

// Arrow keys move between the tabs shown (the WAI-ARIA tabs pattern).
document.querySelector('[role="tablist"]').addEventListener("keydown", (event) => {
  const shown = TABS.filter((tab) => !$(`tab-${tab}`).hidden);
  const here = shown.indexOf(activeTab);
  const moves = { ArrowRight: here + 1, ArrowLeft: here - 1, Home: 0, End: shown.length - 1 };
  if (!(event.key in moves) || here < 0) return;
  event.preventDefault();
  selectTab(shown[(moves[event.key] + shown.length) % shown.length], { focus: true });
});

document.addEventListener("visibilitychange", syncPolling);

// ---- signing in and out ---------------------------------------------------------------

function showSignin(message) {
  ui.console.hidden = true;
  ui.session.hidden = true;
  ui.connection.hidden = true;
  ui.signin.hidden = false;
  say(ui.error, message);
  ui.secret.focus();
}

function enter(principal) {
  who = principal;
  const roles = Array.isArray(principal.roles) ? principal.roles : [];
  const tabs = allowedTabs(roles);
  const channels = channelsFor(principal);
  ui.whoami.textContent = `${principal.principal} (${roles.join(", ") || "no roles"})`;
  ui.signin.hidden = true;
  ui.session.hidden = false;
  ui.console.hidden = false;
  ui.connection.hidden = !tabs.has("tail");
  ui.noRoles.hidden = tabs.size > 0;
  for (const tab of TABS) $(`tab-${tab}`).hidden = !tabs.has(tab);
  if (tabs.has("tail")) tail.start(channels);
  if (tabs.has("publish")) publish.start(channels, roles.includes("admin"));
  selectTab(TABS.find((tab) => tabs.has(tab)) ?? null);
  if (roles.includes("admin")) discoverChannels();
}

/** An admin may use the operator's own channels too: the stats list every channel. */
async function discoverChannels() {
  try {
    const figures = await api("/v1/ws/stats");
    if (who === null) return;
    const names = Object.keys(figures?.channels ?? {}).sort();
    tail.addChannels(names);
    publish.addChannels(names, true);
  } catch {
    // The stats tab shows the error if there is one; the built-in channels still work.
  }
}

async function signIn(credential) {
  ui.button.disabled = true;
  try {
    const principal = await api("/v1/whoami", { cred: credential });
    saveCredential(credential);
    ui.secret.value = ""; // not left in the page once it is stored
    say(ui.error, "");
    enter(principal);
  } catch (error) {
    // A refused credential is forgotten; after a network error it is kept for a reload.
    if (error.status === 401) clearCredential();
    showSignin(error.message);
  } finally {
    ui.button.disabled = false;
  }
}

function signOut() {
  who = null;
  syncPolling();
  tail.stop();
  clients.reset();
  stats.reset();
  publish.reset();
  clearCredential();
  ui.whoami.textContent = "";
  for (const tab of TABS) $(`tab-${tab}`).hidden = true;
  showSignin("");
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault(); // nothing is ever submitted as a form (CSP form-action 'none')
  const secret = ui.secret.value.trim();
  if (!secret) {
    say(ui.error, "Type a bearer token or an API key.");
    ui.secret.focus();
    return;
  }
  signIn({ kind: ui.kind.value, secret });
});

$("signout-button").addEventListener("click", signOut);

// A reload in the same tab signs in again with the kept credential, checked anew.
const kept = loadCredential();
if (kept) {
  ui.signin.hidden = true;
  ui.kind.value = kept.kind;
  signIn(kept);
} else {
  showSignin("");
}
