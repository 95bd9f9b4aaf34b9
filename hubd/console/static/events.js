// The live tail's event list: rows newest first, the text filter, pause/resume with a
// bounded buffer, and the detail pane. It knows nothing about the socket: tail.js hands
// it each published event with add().

import { clockTime, el } from "./dom.js";

const MAX_ROWS = 1000; // rows kept on screen; the oldest go first
const MAX_BUFFER = 5000; // events held while paused; beyond, the oldest are dropped and counted
const PREVIEW_CHARS = 160;
const DETAIL_HINT = "Select an event to see its JSON.";

export function createEventList({ list, detail, filter, pause, buffered, bufferDropped, clear }) {
  // Each row's envelope and its lower-cased search text, without putting them in the DOM.
  const rows = new WeakMap();
  let query = "";
  let paused = false;
  let buffer = [];
  let dropped = 0;
  let selected = null;

  function render(envelope) {
    const body = envelope.body === undefined ? "" : JSON.stringify(envelope.body);
    const row = el(
      "li",
      {
        class: envelope.client_id ? "event-row targeted" : "event-row",
        tabindex: "0",
        dataset: { id: envelope.id, channel: envelope.event_type, message: envelope.message },
      },
      el("time", { datetime: envelope.timestamp, title: envelope.timestamp, text: clockTime(envelope.timestamp) }),
      el("span", { class: "channel", text: envelope.event_type }),
      el("span", { class: "message", text: envelope.message }),
      el("span", {
        class: "preview",
        text: body.length > PREVIEW_CHARS ? `${body.slice(0, PREVIEW_CHARS)}…` : body,
      }),
    );
    const haystack = `${envelope.event_type}\n${envelope.message}\n${body}`.toLowerCase();
    rows.set(row, { envelope, haystack });
    row.hidden = !matches(row);
    return row;
  }

  function matches(row) {
    return !query || rows.get(row).haystack.includes(query);
  }

  function trim() {
    while (list.childElementCount > MAX_ROWS) list.lastElementChild.remove();
  }

  function showCounts() {
    buffered.textContent = String(buffer.length);
    bufferDropped.textContent = String(dropped);
  }

  function select(row) {
    selected?.removeAttribute("aria-current");
    selected = row;
    row.setAttribute("aria-current", "true");
    detail.textContent = JSON.stringify(rows.get(row).envelope, null, 2);
  }

  function setPaused(value) {
    paused = value;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (paused) {
      dropped = 0; // the count is per pause
    } else {
      // Oldest first, each on top of the previous one: the list stays newest first and
      // in arrival order. Only the newest MAX_ROWS could stay on screen anyway.
      const fragment = document.createDocumentFragment();
      const recent = buffer.slice(-MAX_ROWS);
      for (let i = recent.length - 1; i >= 0; i--) fragment.append(render(recent[i]));
      list.prepend(fragment);
      buffer = [];
      trim();
    }
    showCounts();
  }

  pause.addEventListener("click", () => setPaused(!paused));

  filter.addEventListener("input", () => {
    query = filter.value.trim().toLowerCase();
    for (const row of list.children) row.hidden = !matches(row);
  });

  list.addEventListener("click", (event) => {
    const row = event.target.closest(".event-row");
    if (row) select(row);
  });

  // Keyboard: Enter or Space shows a row, the arrows move between the visible rows.
  list.addEventListener("keydown", (event) => {
    const row = event.target.closest(".event-row");
    if (!row) return;
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      select(row);
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? "nextElementSibling" : "previousElementSibling";
      let next = row[step];
      while (next?.hidden) next = next[step];
      next?.focus();
    }
  });

  clear.addEventListener("click", () => {
    list.replaceChildren();
    detail.textContent = DETAIL_HINT;
    selected = null;
  });

  return {
    /** One published event, as it arrived. */
    add(envelope) {
      if (paused) {
        buffer.push(envelope);
        if (buffer.length > MAX_BUFFER) {
          buffer.splice(0, buffer.length - MAX_BUFFER);
          dropped += 1;
        }
        showCounts();
        return;
      }
      list.prepend(render(envelope));
      trim();
    },
    /** Back to the signed-out state. */
    reset() {
      list.replaceChildren();
      buffer = [];
      dropped = 0;
      filter.value = "";
      query = "";
      selected = null;
      detail.textContent = DETAIL_HINT;
      setPaused(false);
    },
  };
}
