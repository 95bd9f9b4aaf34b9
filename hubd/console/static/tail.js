// The live tail's WebSocket: connect, heartbeat, reconnect with resume, and the server's
// notices and close codes (docs/protocol.md). Rows are events.js's business.

import { api, ApiError, credential } from "./api.js";
import { clockTime, el, shortId } from "./dom.js";
import { createEventList } from "./events.js";

const CONFIRMATION = "WebSocket connection established subscribed to global by default";
const NOTICES = new Set(["replay_complete", "events_dropped", "unsubscribed"]);
const DEFAULT_CHANNELS = ["pdfm", "orchestrator", "health"];
// The protocol asks for a ping every idle_timeout / 3 (20 s with the default 60 s); 15 s
// leaves room for a busy or throttled page.
const HEARTBEAT_MS = 15_000;
const HEARTBEAT_MIN_MS = 2_000;
const HEARTBEAT_ID = "console-hb-"; // our pings' ids: their pongs and errors stay silent
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10_000;
// A refusal right after Apply or a page reload is often our own previous connection,
// which the server has not released yet (409 one connection per IP): retry a little
// before calling it refused.
const FRESH_RETRIES = 2;
const MAX_NOTES = 30;

const REFUSED_THOUGH_VALID =
  "The WebSocket was refused, although the credential and channels are valid (the dry run " +
  "answered 426: it would be accepted). Likely reasons: this IP already has a connection " +
  "(hubd allows one connection per IP, 409 ip_in_use: close the other console tab or " +
  "subscriber), or this page's origin is not in server.allowed_origins (403 forbidden_origin).";

/** base64url of the UTF-8 bytes, without padding: the form hubd reads in a subprotocol. */
function base64url(text) {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** A browser cannot set headers on a WebSocket, and a secret in the URL would be logged:
 *  the credential travels as a subprotocol beside hubd.v1, which the server selects. */
function subprotocols(cred) {
  return ["hubd.v1", `${cred.kind === "token" ? "bearer." : "apikey."}${base64url(cred.secret)}`];
}

/** What a close code means to the user, from docs/protocol.md "Close codes". */
function describeClose(code, reason) {
  const meanings = {
    1000: "closed normally",
    1001: "the server is shutting down",
    1006: "the connection was lost",
    1008: "too many frames",
    1009: "a frame was too big",
    1013: "this connection fell behind (slow consumer)",
    4401: "the credential was revoked",
    4408: "idle timeout",
  };
  const words = meanings[code] ?? (reason || "closed");
  return `${words} (${code}${reason && meanings[code] ? `: ${reason}` : ""})`;
}

export function createTail(nodes) {
  const events = createEventList(nodes);
  let conn = null; // {ws, opened, confirmed, resume, since}
  let running = false; // the user wants a connection
  let epoch = 0; // bumped by every user action, so a stale dry run or timer does nothing
  let retryTimer = null;
  let attempt = 0;
  let freshRetries = 0;
  let lastEventId = null; // the last published event seen: where a reconnect resumes
  let lostBecause = ""; // why the last open connection ended
  let reconnectNote = null;
  let heartbeat = null;
  let lastSent = 0;
  let pingSeq = 0;
  // The page cannot read the server's idle_timeout: after a 4408 it pings twice as often.
  let heartbeatMs = HEARTBEAT_MS;
  let selection = null; // the channels of the current connection; null: the defaults

  function setStatus(state, text) {
    nodes.status.dataset.state = state;
    nodes.status.textContent = text;
  }

  function setClientId(id) {
    nodes.clientId.textContent = id || "";
  }

  function addNote(kind, text) {
    const note = el(
      "li",
      { class: "note", dataset: { kind } },
      el("time", { text: clockTime(new Date()) }),
      " ",
      el("span", { class: "note-text", text }),
    );
    nodes.notes.prepend(note);
    while (nodes.notes.childElementCount > MAX_NOTES) nodes.notes.lastElementChild.remove();
    return note;
  }

  // ---- channels -------------------------------------------------------------------

  function renderChannels(available) {
    nodes.channels.replaceChildren();
    addChannels(available);
  }

  /** Append checkboxes for channels not shown yet (never rebuild: a checkbox being
   *  clicked must not be replaced under the pointer). */
  function addChannels(names) {
    const shown = new Set([...nodes.channels.querySelectorAll('input[name="channel"]')].map((box) => box.value));
    for (const name of names) {
      if (shown.has(name)) continue;
      const global = name === "global";
      const box = el("input", {
        type: "checkbox",
        name: "channel",
        value: name,
        checked: global || (selection ?? DEFAULT_CHANNELS).includes(name),
        // The server always delivers global; the box only says so.
        disabled: global,
      });
      const label = el("label", { class: "channel-choice", title: global ? "always delivered" : undefined }, box, ` ${name}`);
      nodes.channels.append(label);
    }
  }

  function chosenChannels() {
    return [...nodes.channels.querySelectorAll('input[name="channel"]:checked')]
      .map((box) => box.value)
      .filter((name) => name !== "global");
  }

  function subscribePath(since) {
    const types = (selection ?? []).map(encodeURIComponent).join(",");
    return `/v1/ws/subscribe?event_types=${types}${since ? `&since=${since}` : ""}`;
  }

  // ---- connecting -----------------------------------------------------------------

  function open(resume) {
    const since = resume ? lastEventId : null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${subscribePath(since)}`, subprotocols(credential()));
    conn = { ws, opened: false, confirmed: false, resume, since };
    const names = [...selection, "global"].join(", ");
    setStatus(resume ? "reconnecting" : "connecting", `${resume ? "Reconnecting" : "Connecting"} to ${names}…`);
    ws.addEventListener("open", () => {
      if (conn?.ws === ws) conn.opened = true;
    });
    ws.addEventListener("message", (event) => {
      if (conn?.ws === ws) receive(event.data);
    });
    ws.addEventListener("close", (event) => {
      if (conn?.ws === ws) closed(event);
    });
    // "error" carries no detail in browsers; the close event that follows says the rest.
  }

  /** Close the current socket ourselves; resolves once it is closed (or after 2 s), so
   *  the next connection does not meet our own as "this IP already has a connection". */
  function closeCurrent() {
    stopHeartbeat();
    clearTimeout(retryTimer);
    retryTimer = null;
    const ws = conn?.ws;
    conn = null;
    setClientId("");
    if (!ws || ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      ws.addEventListener("close", resolve, { once: true });
      setTimeout(resolve, 2000);
      ws.close(1000, "console closed the tail");
    });
  }

  function retryLater(resume, why, { slow = false } = {}) {
    const base = slow ? BACKOFF_MAX_MS : Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
    const delay = Math.min(BACKOFF_MAX_MS, base * (0.75 + Math.random() * 0.5)); // jitter
    attempt += 1;
    setStatus(resume ? "reconnecting" : "connecting", `${why}. Retrying in ${(delay / 1000).toFixed(1)} s…`);
    retryTimer = setTimeout(() => {
      retryTimer = null;
      if (running) open(resume);
    }, delay);
  }

  function giveUp(state, text, noteKind) {
    running = false;
    setStatus(state, text);
    if (noteKind) addNote(noteKind, text);
  }

  function closed(event) {
    const was = conn;
    conn = null;
    stopHeartbeat();
    setClientId("");
    if (!was.opened) {
      refused(was);
      return;
    }
    const what = describeClose(event.code, event.reason);
    lostBecause = what; // for the "reconnected" note, whatever the retries meet meanwhile
    if (event.code === 4401) {
      giveUp("closed", `The server closed the connection: ${what}. Sign out and sign in with a current credential.`, "error");
    } else if ([1002, 1007, 1009].includes(event.code)) {
      // The server could not read what this page sent: reconnecting would repeat it.
      giveUp("closed", `The server closed the connection: ${what}. Press Apply to reconnect.`, "error");
    } else {
      if (event.code === 4408) heartbeatMs = Math.max(HEARTBEAT_MIN_MS, heartbeatMs / 2);
      // 1001 drain, 1006 network loss, 1013 slow consumer, 4408 idle...: come back and
      // resume from the last event; after 1008 (too many frames), slowly.
      retryLater(true, `Disconnected: ${what}`, { slow: event.code === 1008 });
    }
  }

  /** The socket closed before it opened: the browser hides the refusal's status, so ask
   *  the same question over plain HTTP (the dry run) to learn the real reason. */
  async function refused(was) {
    const mine = epoch;
    let status;
    let message;
    try {
      await api(subscribePath(was.since));
      status = 426; // not expected (the dry run never says 2xx): read it as "would pass"
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      ({ status, message } = error);
    }
    if (mine !== epoch || !running) return; // the user did something else meanwhile
    const retryable = status === 426 || status === 409 || status === 503 || status === 0;
    const detail = status === 426 ? REFUSED_THOUGH_VALID : message;
    const transient = status === 503 || status === 0; // draining, at capacity, unreachable
    if (retryable && (was.resume || transient || freshRetries < FRESH_RETRIES)) {
      if (!was.resume && !transient) freshRetries += 1;
      retryLater(was.resume, `Refused: ${detail}`);
      return;
    }
    giveUp("refused", detail);
  }

  // ---- frames -----------------------------------------------------------------------

  function receive(data) {
    if (Date.now() - lastSent >= heartbeatMs) ping(); // timers of hidden tabs are throttled
    // Batch mode puts several envelopes in a frame, one per line; harmless otherwise.
    for (const line of String(data).split("\n")) {
      if (!line) continue;
      let envelope;
      try {
        envelope = JSON.parse(line);
      } catch {
        addNote("error", `A frame from the server is not JSON: ${line.slice(0, 120)}`);
        continue;
      }
      frame(envelope);
    }
  }

  function frame(envelope) {
    if (!conn.confirmed) {
      conn.confirmed = true;
      confirmed(envelope);
      if (envelope.message === CONFIRMATION) return;
    }
    if (typeof envelope.ref_id === "string") {
      reply(envelope);
    } else if (envelope.event_type === "global" && envelope.client_id && NOTICES.has(envelope.message)) {
      notice(envelope);
    } else {
      // A published event: the only kind of id the server can resume from.
      lastEventId = envelope.id;
      events.add(envelope);
    }
  }

  function confirmed(envelope) {
    const body = envelope.body ?? {};
    setClientId(body.client_id);
    attempt = 0;
    freshRetries = 0;
    const subscriptions = Array.isArray(body.subscriptions) ? body.subscriptions : [...selection, "global"];
    setStatus("open", `Connected at ${clockTime(new Date())} to ${subscriptions.join(", ")}`);
    reconnectNote = null;
    if (conn.resume) {
      const from = conn.since ? `; resuming after event ${shortId(conn.since)}` : "";
      reconnectNote = addNote("reconnected", `Reconnected after: ${lostBecause}${from}`);
    }
    startHeartbeat();
    if (!body.client_id && subscriptions.includes("system")) {
      send({ event_type: "system", message: "client-id", id: "console-client-id" });
    }
  }

  function reply(envelope) {
    if (envelope.message === "client-id") {
      setClientId(envelope.body?.["client-id"]);
    } else if (envelope.message === "error" && !envelope.ref_id.startsWith(HEARTBEAT_ID)) {
      addNote("error", `The server refused a frame: ${envelope.body?.error ?? "no reason given"}`);
    }
    // pong, and the error a ping gets without the health channel: the heartbeat worked.
  }

  function notice(envelope) {
    const body = envelope.body ?? {};
    if (envelope.message === "replay_complete") {
      const replayed = `${body.replayed ?? 0} missed event(s) replayed`;
      if (body.complete === false) {
        addNote(
          "replay-incomplete",
          `Resume incomplete: ${replayed}, but some may be missing (the server no longer ` +
            "holds them, or it restarted). Re-read the current state from its source.",
        );
      } else if (reconnectNote) {
        reconnectNote.querySelector(".note-text").append(`; ${replayed}`);
      }
    } else if (envelope.message === "events_dropped") {
      const why =
        body.reason === "backplane_gap"
          ? "the cluster node missed them (backplane gap); re-read the state from its source"
          : "this connection's queue overflowed on the server";
      addNote("events-dropped", `${body.dropped ?? "Some"} event(s) were dropped: ${why}.`);
    } else if (envelope.message === "unsubscribed") {
      const removed = body.unsubscribed ?? [];
      const remaining = body.subscriptions ?? [];
      // Reconnects ask for what is left, and the boxes say so.
      selection = remaining.filter((name) => name !== "global");
      for (const box of nodes.channels.querySelectorAll('input[name="channel"]')) {
        if (removed.includes(box.value)) box.checked = false;
      }
      setStatus("open", `Connected to ${remaining.join(", ")}`);
      addNote("unsubscribed", `Unsubscribed from ${removed.join(", ")}; still receiving ${remaining.join(", ")}.`);
    }
  }

  // ---- heartbeat --------------------------------------------------------------------

  function send(frameObject) {
    if (conn?.ws.readyState !== WebSocket.OPEN) return;
    conn.ws.send(JSON.stringify(frameObject));
    lastSent = Date.now();
  }

  function ping() {
    if (conn?.confirmed) send({ event_type: "health", message: "ping", id: `${HEARTBEAT_ID}${++pingSeq}` });
  }

  function startHeartbeat() {
    stopHeartbeat();
    lastSent = Date.now();
    heartbeat = setInterval(ping, heartbeatMs);
  }

  function stopHeartbeat() {
    clearInterval(heartbeat);
    heartbeat = null;
  }

  // ---- user actions -----------------------------------------------------------------

  async function connect() {
    epoch += 1;
    const mine = epoch;
    selection = chosenChannels();
    running = true;
    attempt = 0;
    freshRetries = 0;
    await closeCurrent();
    if (mine === epoch) open(false);
  }

  function disconnect(text = "Disconnected.") {
    epoch += 1;
    running = false;
    closeCurrent();
    setStatus("closed", text);
  }

  nodes.apply.addEventListener("click", connect);
  nodes.disconnect.addEventListener("click", () => disconnect());
  nodes.clearNotes.addEventListener("click", () => nodes.notes.replaceChildren());
  // Leaving the page: close cleanly so a reload is not refused by our own connection.
  addEventListener("pagehide", () => conn?.ws.close(1000, "page closed"));

  return {
    /** Signed in with a principal that may subscribe: show its channels and connect. */
    start(channels) {
      renderChannels(channels);
      connect();
    },
    /** More channels became known (an admin's stats list custom ones). */
    addChannels,
    /** Signed out: close, forget the events and the resume point. */
    stop() {
      disconnect("Not connected.");
      events.reset();
      nodes.notes.replaceChildren();
      lastEventId = null;
      reconnectNote = null;
      selection = null; // a new sign-in starts from the default channels
      heartbeatMs = HEARTBEAT_MS;
    },
  };
}
