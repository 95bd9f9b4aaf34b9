// Small DOM helpers shared by the views.
//
// Everything the server sends reaches the page through `text` (textContent) or an
// attribute, never through innerHTML, so an event body can never become markup.

/** Build an element: `el("td", {class: "num", text: "3", dataset: {id: "x"}}, child, ...)`.
 *  Attributes go through setAttribute; there is no way to pass `style` (the CSP blocks
 *  style attributes, and CSS classes are the one place looks are decided). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "style") throw new Error("el(): no style attributes (CSP)");
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

/** Show `text` in `node`, hiding it when there is nothing to say. */
export function say(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** "14:35:03.600" in the browser's time zone, from an RFC 3339 timestamp (or a Date). */
export function clockTime(value) {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value ?? "");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/** The first characters of a long id, enough to tell ids apart on screen. */
export function shortId(id, length = 12) {
  return typeof id === "string" && id.length > length ? `${id.slice(0, length)}…` : String(id ?? "");
}
