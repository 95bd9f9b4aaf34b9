// The admin's live figures: GET /v1/ws/stats every second, drawn as four small charts.
//
// The endpoint gives counters since start; rates are the difference of two readings over
// the server's own uptime difference (not the page's clock, which a busy tab delays).
// Latency is charted per reading interval, from the difference of the cumulative
// histograms, so a slow second shows up instead of drowning in the since-start figures.

import { jsonPoller } from "./api.js";
import { createChart } from "./charts.js";
import { say } from "./dom.js";

const POLL_MS = 1000;

function formatRate(value) {
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} /s`;
}

function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return `${ms >= 100 ? ms.toFixed(0) : Number(ms.toPrecision(2))} ms`;
}

function formatUptime(seconds) {
  const s = Math.floor(seconds);
  const [d, h, m] = [Math.floor(s / 86400), Math.floor((s % 86400) / 3600), Math.floor((s % 3600) / 60)];
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

/** Cumulative bucket counts in bound order. Object key order cannot be trusted here:
 *  JavaScript puts integer-like keys ("1", "5", "10") before the others. */
function sortedBuckets(histogram) {
  return Object.entries(histogram?.buckets ?? {})
    .map(([bound, count]) => [bound === "+Inf" ? Infinity : Number(bound), count])
    .sort((a, b) => a[0] - b[0]);
}

/** The q-quantile's bucket upper bound in ms among the deliveries between two readings
 *  (the server's own method: "at most this"); null when there were none. */
function windowQuantile(now, before, q) {
  const earlier = new Map(before);
  const deltas = now.map(([bound, count]) => [bound, count - (earlier.get(bound) ?? 0)]);
  const total = deltas.at(-1)?.[1] ?? 0;
  if (total <= 0) return null;
  const hit = deltas.find(([, count]) => count >= q * total);
  return hit && Number.isFinite(hit[0]) ? hit[0] * 1000 : null;
}

export function createStats({ panels, error, summary }) {
  const value = (panel) => panel.querySelector(".value");
  const box = (panel) => panel.querySelector(".chart-box");
  const charts = {
    connections: createChart(box(panels.connections), {
      title: "open connections",
      series: [{ name: "connections", className: "s1" }],
      format: String,
    }),
    deliveries: createChart(box(panels.deliveries), {
      title: "deliveries per second",
      series: [{ name: "deliveries/s", className: "s1" }],
      format: (top) => `${top} /s`,
    }),
    drops: createChart(box(panels.drops), {
      title: "drops per second",
      series: [{ name: "drops/s", className: "s3" }],
      format: (top) => `${top} /s`,
    }),
    latency: createChart(box(panels.latency), {
      title: "delivery latency p50 and p99 in milliseconds",
      series: [
        { name: "p50", className: "s1" },
        { name: "p99", className: "s2" },
      ],
      format: (top) => `${top} ms`,
      minTop: 0.1,
    }),
  };
  let previous = null;
  const poll = jsonPoller("/v1/ws/stats", POLL_MS, error, (stats) => {
    show(stats, previous);
    previous = { ...stats, buckets: sortedBuckets(stats.delivery_latency) };
  });

  function show(stats, before) {
    value(panels.connections).textContent = String(stats.connections);
    charts.connections.push(stats.connections);

    // A rate needs two readings of the same process (a restart starts from zero again).
    const seconds = before ? stats.uptime_seconds - before.uptime_seconds : 0;
    const rate = (field) => (seconds > 0 && stats[field] >= before[field] ? (stats[field] - before[field]) / seconds : null);
    const deliveries = rate("delivered");
    const drops = rate("dropped");
    value(panels.deliveries).textContent = deliveries === null ? "–" : formatRate(deliveries);
    value(panels.drops).textContent = drops === null ? "–" : formatRate(drops);
    charts.deliveries.push(deliveries);
    charts.drops.push(drops);

    const latency = stats.delivery_latency ?? {};
    const buckets = sortedBuckets(latency);
    const p50 = seconds > 0 ? windowQuantile(buckets, before.buckets, 0.5) : null;
    const p99 = seconds > 0 ? windowQuantile(buckets, before.buckets, 0.99) : null;
    charts.latency.push(p50, p99);
    if (p50 !== null) {
      value(panels.latency).textContent = `last second: p50 ≤ ${formatMs(p50)} · p99 ≤ ${formatMs(p99)}`;
    } else if (latency.count) {
      const ms = (s) => (s === null || s === undefined ? "> 10 s" : formatMs(s * 1000));
      value(panels.latency).textContent = `since start: p50 ≤ ${ms(latency.p50_le_seconds)} · p99 ≤ ${ms(latency.p99_le_seconds)}`;
    } else {
      value(panels.latency).textContent = "p50 – · p99 – (no deliveries yet)";
    }

    summary.textContent =
      `${stats.draining ? "DRAINING · " : ""}uptime ${formatUptime(stats.uptime_seconds)} · ` +
      `published ${stats.published} · delivered ${stats.delivered} · dropped ${stats.dropped} · queued ${stats.queued}`;
  }

  return {
    /** Poll while the tab is shown (and the page visible). A new run starts its rates
     *  afresh rather than averaging over the time it was not looking. */
    setActive(active) {
      if (active && !poll.running) {
        previous = null;
        poll.start();
      } else if (!active) {
        poll.stop();
      }
    },
    reset() {
      poll.stop();
      previous = null;
      for (const chart of Object.values(charts)) chart.reset();
      for (const panel of Object.values(panels)) value(panel).textContent = "–";
      say(error, "");
      summary.textContent = "";
    },
  };
}
