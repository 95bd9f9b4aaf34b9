// The hubd HTTP API as the console uses it: the credential, fetch wrappers, a poller.
//
// The credential is typed once and kept in sessionStorage (this tab only, gone when the
// tab closes), never in a URL or localStorage: URLs end up in history and proxy logs.

import { say } from "./dom.js";

const STORAGE_KEY = "hubd.console.credential";
const KINDS = new Set(["token", "api_key"]);

let current = null;

/** The credential kept for this tab, or null. A malformed entry is dropped. */
export function loadCredential() {
  try {
    const value = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? "null");
    if (value && KINDS.has(value.kind) && typeof value.secret === "string" && value.secret) {
      current = { kind: value.kind, secret: value.secret };
      return current;
    }
  } catch {
    // Not JSON: someone else's value; forget it below.
  }
  clearCredential();
  return null;
}

export function saveCredential(credential) {
  current = { kind: credential.kind, secret: credential.secret };
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(current));
}

export function clearCredential() {
  current = null;
  sessionStorage.removeItem(STORAGE_KEY);
}

export function credential() {
  return current;
}

/** The header hubd reads the credential from (docs/protocol.md, Credentials). */
export function authHeaders(cred = current) {
  if (!cred) return {};
  return cred.kind === "token" ? { Authorization: `Bearer ${cred.secret}` } : { "X-Api-Key": cred.secret };
}

/** An answer that was not 2xx, or no answer at all (status 0, code "network"). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** Call the API; resolves with the parsed JSON of a 2xx answer, rejects with ApiError.
 *  hubd's refusals are all `{"error": code, "message": sentence}`: the message is what the
 *  user sees, so it is kept as is. */
export async function api(path, { method = "GET", body, cred = current, signal } = {}) {
  const headers = { Accept: "application/json", ...authHeaders(cred) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", `could not reach hubd (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // A proxy's HTML error page, say: fall back to the status line below.
  }
  if (!response.ok) {
    const code = typeof data?.error === "string" ? data.error : `http_${response.status}`;
    const message =
      typeof data?.message === "string" ? data.message : `HTTP ${response.status} ${response.statusText}`.trim();
    throw new ApiError(response.status, code, message);
  }
  return data;
}

/** Run `task(signal)` now and then every `intervalMs` after the previous run ended (so a
 *  slow server never gets overlapping requests), until stop(). stop() aborts a request in
 *  flight, so no answer lands after it. */
export function poller(task, intervalMs) {
  let timer = null;
  let controller = null;
  let again = false; // refresh() asked for a run while one was under way

  async function tick() {
    timer = null;
    again = false;
    const mine = controller;
    try {
      await task(mine.signal);
    } catch (error) {
      if (error.name !== "AbortError") console.warn("poll failed", error);
    }
    if (controller !== mine || mine.signal.aborted) return;
    timer = setTimeout(tick, again ? 0 : intervalMs);
  }

  return {
    get running() {
      return controller !== null;
    },
    start() {
      if (controller) return;
      controller = new AbortController();
      tick();
    },
    stop() {
      if (!controller) return;
      controller.abort();
      controller = null;
      clearTimeout(timer);
      timer = null;
    },
    /** Run again now (an action changed what the answer would show); if a run is under
     *  way its answer may predate the action, so another follows it at once. */
    refresh() {
      if (!controller) return;
      if (timer === null) {
        again = true;
        return;
      }
      clearTimeout(timer);
      tick();
    },
  };
}

/** A poller of GET `path` every `intervalMs`: each answer goes to `onAnswer`; a failure is
 *  shown in `errorNode` (cleared by the next answer), and a 401/403 stops it: a
 *  credential that lost its rights will not get them back by asking again. */
export function jsonPoller(path, intervalMs, errorNode, onAnswer) {
  const poll = poller(async (signal) => {
    let answer;
    try {
      answer = await api(path, { signal });
    } catch (failure) {
      if (failure.name === "AbortError") throw failure;
      say(errorNode, failure.message);
      if (failure.status === 401 || failure.status === 403) poll.stop();
      return;
    }
    say(errorNode, "");
    onAnswer(answer);
  }, intervalMs);
  return poll;
}
