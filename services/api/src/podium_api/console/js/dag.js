// The steps of a run as a DAG in SVG: columns by depth (longest path from a root).

import { s } from "./dom.js";

export const NODE_W = 170;
export const NODE_H = 46;
const GAP_X = 60;
const GAP_Y = 18;
const PAD = 16;

/**
 * Lay the steps out: {nodes: [{id, status, step, x, y, depth}], edges: [{from, to}], width, height}.
 * A dependency the run has not reached yet (no result for it) is a "pending" node.
 * Without depends_on (an older API) the steps are one row, in the order they started.
 */
export function layout(steps) {
  const byId = new Map(steps.map((st) => [st.step_id, st]));
  const haveDeps = steps.some((st) => Array.isArray(st.depends_on));
  const deps = new Map();
  if (haveDeps) {
    for (const st of steps) {
      for (const d of st.depends_on ?? []) {
        if (!byId.has(d)) byId.set(d, { step_id: d, status: "pending", depends_on: [] });
      }
    }
    for (const [id, st] of byId) deps.set(id, (st.depends_on ?? []).filter((d) => byId.has(d)));
  } else {
    for (const st of steps) deps.set(st.step_id, []);
  }
  const depth = new Map();
  const visiting = new Set();
  const depthOf = (id) => {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0; // a cycle cannot happen in a valid workflow; never loop
    visiting.add(id);
    const d = Math.max(-1, ...deps.get(id).map(depthOf)) + 1;
    visiting.delete(id);
    depth.set(id, d);
    return d;
  };
  let order = [...byId.keys()];
  if (!haveDeps) {
    order = [...steps].sort((a, b) => String(a.first_at).localeCompare(String(b.first_at))).map((st) => st.step_id);
    order.forEach((id, i) => depth.set(id, i));
  }
  const columns = [];
  for (const id of order) {
    const d = depthOf(id);
    (columns[d] ??= []).push(id);
  }
  const nodes = [];
  const pos = new Map();
  columns.forEach((ids, col) => {
    ids.sort();
    ids.forEach((id, row) => {
      const node = {
        id, step: byId.get(id), status: byId.get(id).status, depth: col,
        x: PAD + col * (NODE_W + GAP_X), y: PAD + row * (NODE_H + GAP_Y),
      };
      nodes.push(node);
      pos.set(id, node);
    });
  });
  const edges = [];
  for (const [id, ds] of deps) for (const d of ds) edges.push({ from: d, to: id });
  const rows = Math.max(1, ...columns.map((c) => c.length));
  return {
    nodes, edges,
    width: PAD * 2 + Math.max(1, columns.length) * (NODE_W + GAP_X) - GAP_X,
    height: PAD * 2 + rows * (NODE_H + GAP_Y) - GAP_Y,
    pos,
  };
}

/** The DAG as an SVG element; onSelect(step_id) on click, Enter or Space on a node. */
export function dagSvg(steps, onSelect) {
  const g = layout(steps);
  const svg = s("svg", {
    width: g.width, height: g.height, viewBox: `0 0 ${g.width} ${g.height}`,
    role: "group", "aria-label": `Steps: ${g.nodes.length}`,
  });
  svg.append(s("defs", {}, s("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse",
  }, s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))));
  for (const e of g.edges) {
    const a = g.pos.get(e.from);
    const b = g.pos.get(e.to);
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const mx = (x1 + x2) / 2;
    svg.append(s("path", {
      class: "edge", d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`, "marker-end": "url(#arrow)",
      dataset: { from: e.from, to: e.to },
    }));
  }
  for (const n of g.nodes) {
    const attempts = n.step.attempts ? ` · ${n.step.attempts} attempt${n.step.attempts === 1 ? "" : "s"}` : "";
    const label = n.id.length > 22 ? `${n.id.slice(0, 21)}…` : n.id;
    const select = () => onSelect?.(n.id);
    svg.append(s("g", {
      class: `node s-${n.status}`, tabindex: "0", role: "button",
      "aria-label": `step ${n.id}: ${n.status}${attempts}`, dataset: { step: n.id },
      transform: `translate(${n.x} ${n.y})`,
      onclick: select,
      onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(); } },
    },
      s("title", {}, `${n.id}: ${n.status}`),
      s("rect", { width: NODE_W, height: NODE_H, rx: "6" }),
      s("text", { x: "10", y: "19" }, label),
      s("text", { x: "10", y: "36", class: "sub" }, `${n.status}${attempts}`)));
  }
  return svg;
}
