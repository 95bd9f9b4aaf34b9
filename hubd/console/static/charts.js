// Small live line charts, drawn as SVG by the page (no library): the last `maxPoints`
// readings of one or more series, newest on the right, scaled to a round maximum.

import { el } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 240; // viewBox units; the SVG stretches to its box (preserveAspectRatio none)
const HEIGHT = 60;

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

/** The smallest 1, 2 or 5 × 10^k at or above `value`: axis tops that read well. */
export function roundUp(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/**
 * @param container element to draw into
 * @param series    [{name, className}]: one line each, coloured by its CSS class
 * @param format    turns the axis top into its label ("5 /s", "2.5 ms")
 * @param minTop    the axis never goes below this, so noise near zero stays flat
 */
export function createChart(container, { title, series, format = String, minTop = 1, maxPoints = 120 }) {
  const data = series.map(() => []);
  const lines = series.map((line) =>
    // non-scaling-stroke: lines keep their width however the box stretches the drawing.
    svg("path", { class: `line ${line.className}`, fill: "none", "vector-effect": "non-scaling-stroke" }),
  );
  const drawing = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": `${title}, last ${maxPoints} readings`,
  });
  drawing.append(
    svg("line", { class: "grid", x1: 0, y1: 0.5, x2: WIDTH, y2: 0.5, "vector-effect": "non-scaling-stroke" }),
    svg("line", { class: "grid", x1: 0, y1: HEIGHT - 0.5, x2: WIDTH, y2: HEIGHT - 0.5, "vector-effect": "non-scaling-stroke" }),
    ...lines,
  );
  const top = el("span", { class: "chart-top" });
  const legend =
    series.length > 1
      ? el("span", { class: "chart-legend" }, ...series.map((line) => el("span", { class: `key ${line.className}`, text: line.name })))
      : "";
  container.replaceChildren(el("div", { class: "chart" }, el("div", { class: "chart-head" }, top, legend), drawing));

  function draw() {
    const highest = Math.max(minTop, ...data.flat().filter((value) => value !== null));
    const axisTop = roundUp(highest);
    top.textContent = `scale 0–${format(axisTop)}`;
    const x = (index, length) => ((maxPoints - length + index) * WIDTH) / (maxPoints - 1);
    const y = (value) => (HEIGHT - 1 - (value / axisTop) * (HEIGHT - 2)).toFixed(2);
    data.forEach((points, which) => {
      let path = "";
      let pen = "M"; // a missing reading (null) lifts the pen: a gap, not a fake zero
      points.forEach((value, index) => {
        if (value === null) {
          pen = "M";
          return;
        }
        path += `${pen}${x(index, points.length).toFixed(2)},${y(value)}`;
        pen = "L";
      });
      lines[which].setAttribute("d", path);
    });
  }

  return {
    /** One reading per series, in the order given (null: no value this time). */
    push(...values) {
      data.forEach((points, which) => {
        points.push(values[which] ?? null);
        if (points.length > maxPoints) points.shift();
      });
      draw();
    },
    reset() {
      for (const points of data) points.length = 0;
      draw();
    },
  };
}
