// The admin's list of open connections (GET /v1/ws/clients every 3 s), with a button per
// channel to unsubscribe it (POST /v1/ws/unsubscribe).
//
// Rows are updated in place, keyed by client id, rather than rebuilt on every refresh:
// a button the user is about to click stays the same element.

import { api, jsonPoller } from "./api.js";
import { clockTime, el, say } from "./dom.js";

const REFRESH_MS = 3000;

export function createClients({ table, error, updated, count, ownClientId }) {
  const body = table.tBodies[0];
  const poll = jsonPoller("/v1/ws/clients", REFRESH_MS, error, (answer) => {
    render(answer.clients ?? []);
    count.textContent = `${answer.count ?? answer.clients?.length ?? 0} open connection(s)`;
    updated.textContent = `Updated ${clockTime(new Date())}`;
  });

  function render(clients) {
    const existing = new Map([...body.rows].map((row) => [row.dataset.clientId, row]));
    const own = ownClientId();
    let previous = null;
    for (const client of clients) {
      let row = existing.get(client.client_id);
      existing.delete(client.client_id);
      if (!row) row = newRow(client.client_id);
      update(row, client, own);
      // Keep the server's order (oldest first) without moving rows that are in place.
      const wanted = previous ? previous.nextElementSibling : body.firstElementChild;
      if (row !== wanted) body.insertBefore(row, wanted);
      previous = row;
    }
    for (const gone of existing.values()) gone.remove();
  }

  function newRow(clientId) {
    const cells = ["id mono", "principal", "ip mono", "subscriptions", "num", "num"].map((cls) => el("td", { class: cls }));
    cells[0].textContent = clientId;
    return el("tr", { class: "client-row", dataset: { clientId } }, ...cells);
  }

  function setText(cell, text) {
    if (cell.textContent !== text) cell.textContent = text;
  }

  function update(row, client, own) {
    const [, principal, ip, channels, depth, dropped] = row.cells;
    const mine = Boolean(own) && client.client_id === own;
    row.classList.toggle("own", mine);
    row.title = mine ? "this console's own connection" : "";
    row.classList.toggle("closing", Boolean(client.closing));
    setText(principal, client.principal ?? "");
    setText(ip, client.ip ?? "");
    setText(depth, String(client.queue_depth ?? ""));
    depth.title = `capacity ${client.queue_capacity ?? "?"}`;
    setText(dropped, String(client.dropped ?? ""));
    const subscriptions = client.subscriptions ?? [];
    if (channels.dataset.list !== subscriptions.join(",")) {
      channels.dataset.list = subscriptions.join(",");
      // Spaces between the chips, so the cell also reads as words (copy, screen readers).
      channels.replaceChildren(...subscriptions.flatMap((name, i) => [i ? " " : "", channelControl(client.client_id, name)]));
    }
  }

  function channelControl(clientId, name) {
    // global cannot be unsubscribed (the server refuses it alone, ignores it with others).
    if (name === "global") return el("span", { class: "chip fixed", title: "global is always delivered", text: name });
    return el("button", {
      type: "button",
      class: "chip unsubscribe",
      dataset: { channel: name },
      title: `Unsubscribe this connection from ${name}`,
      "aria-label": `Unsubscribe ${clientId} from ${name}`,
      text: name,
    });
  }

  body.addEventListener("click", async (event) => {
    const button = event.target.closest("button.unsubscribe");
    if (!button) return;
    const clientId = button.closest("tr").dataset.clientId;
    button.disabled = true;
    try {
      await api("/v1/ws/unsubscribe", {
        method: "POST",
        body: { client_id: clientId, event_types: [button.dataset.channel] },
      });
      say(error, "");
    } catch (failure) {
      say(error, failure.message);
      button.disabled = false;
    }
    poll.refresh();
  });

  return {
    /** Poll while the tab is shown (and the page visible), not otherwise. */
    setActive(active) {
      if (active) poll.start();
      else poll.stop();
    },
    reset() {
      poll.stop();
      body.replaceChildren();
      say(error, "");
      updated.textContent = "";
      count.textContent = "";
    },
  };
}
