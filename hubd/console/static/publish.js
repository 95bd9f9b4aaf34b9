// The publish form: one event to POST /v1/events, its JSON body checked here first so a
// typo is pointed at before anything is sent.

import { api } from "./api.js";
import { el, say } from "./dom.js";

// Written by the server only: publishing to them is refused (400 server_owned_channel).
const SERVER_OWNED = new Set(["health", "system"]);

export function createPublish(nodes) {
  const { form, channel, message, body, bodyError, submit, result } = nodes;

  function showResult(state, text) {
    if (state) result.dataset.state = state;
    else delete result.dataset.state; // in flight: neither "ok" nor "error" yet
    result.textContent = text;
  }

  /** The body as a value, `undefined` for none, or null after showing why it is invalid. */
  function readBody() {
    const text = body.value.trim();
    if (!text) return { value: undefined };
    try {
      return { value: JSON.parse(text) };
    } catch (error) {
      return { error: `The body is not valid JSON: ${error.message}` };
    }
  }

  function checkBody() {
    const { error } = readBody();
    say(bodyError, error);
    body.setAttribute("aria-invalid", String(Boolean(error)));
    return !error;
  }

  body.addEventListener("input", () => {
    // Clear a shown error as soon as the text is fixed; do not nag while typing.
    if (!bodyError.hidden) checkBody();
  });
  body.addEventListener("blur", checkBody);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const parsed = readBody();
    if (!checkBody()) {
      body.focus();
      return;
    }
    if (!message.value.trim()) {
      showResult("error", "The message (event name) must not be empty.");
      message.focus();
      return;
    }
    const payload = { event_type: channel.value, message: message.value.trim() };
    if (parsed.value !== undefined && parsed.value !== null) payload.body = parsed.value;
    submit.disabled = true;
    showResult(null, "Publishing…");
    try {
      const answer = await api("/v1/events", { method: "POST", body: payload });
      showResult("ok", `Published to ${payload.event_type}: id ${answer.id}`);
    } catch (error) {
      showResult("error", error.message);
    } finally {
      submit.disabled = false;
    }
  });

  return {
    /** Offer the channels this principal may publish to. */
    start(channels, isAdmin) {
      channel.replaceChildren();
      this.addChannels(channels, isAdmin);
    },
    /** Append channels not offered yet (global only to admins, never the server's own). */
    addChannels(channels, isAdmin) {
      const shown = new Set([...channel.options].map((option) => option.value));
      for (const name of channels) {
        if (shown.has(name) || SERVER_OWNED.has(name) || (name === "global" && !isAdmin)) continue;
        channel.append(el("option", { value: name, text: name, selected: name === "pdfm" }));
      }
    },
    reset() {
      form.reset();
      channel.replaceChildren();
      say(bodyError, "");
      body.removeAttribute("aria-invalid");
      delete result.dataset.state;
      result.textContent = "";
      submit.disabled = false;
    },
  };
}
