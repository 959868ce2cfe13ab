// A trace as a waterfall: one row per span, in tree order, bars on one time axis.

import { h, ms } from "./dom.js";

const t = (iso) => (iso ? new Date(iso).getTime() : NaN);

/** Spans in tree order with their depth and their bar as fractions of the trace's span. */
export function waterfall(spans) {
  const starts = spans.map((sp) => t(sp.start)).filter(Number.isFinite);
  const ends = spans.map((sp) => (Number.isFinite(t(sp.end)) ? t(sp.end) : t(sp.start) + (sp.duration_ms ?? 0)))
    .filter(Number.isFinite);
  const t0 = Math.min(...starts);
  const t1 = Math.max(...ends, t0 + 1);
  const ids = new Set(spans.map((sp) => sp.span_id));
  const children = new Map();
  for (const sp of spans) {
    const parent = sp.parent_id && ids.has(sp.parent_id) ? sp.parent_id : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(sp);
  }
  for (const list of children.values()) list.sort((a, b) => t(a.start) - t(b.start));
  const rows = [];
  const walk = (parent, depth) => {
    for (const sp of children.get(parent) ?? []) {
      const start = t(sp.start);
      const dur = sp.duration_ms ?? (t(sp.end) - start);
      rows.push({ span: sp, depth, left: (start - t0) / (t1 - t0), width: Math.max(0, dur) / (t1 - t0) });
      walk(sp.span_id, depth + 1);
    }
  };
  walk(null, 0);
  return { rows, total_ms: t1 - t0 };
}

export function waterfallView(spans) {
  const { rows, total_ms } = waterfall(spans);
  const list = h("div", { class: "waterfall", role: "list", "aria-label": `Trace: ${rows.length} spans over ${ms(total_ms)}` });
  for (const r of rows) {
    const sp = r.span;
    const failed = String(sp.status ?? "").toLowerCase().includes("error");
    const detail = h("pre", { class: "json", hidden: true }, JSON.stringify(sp.attributes ?? {}, null, 2));
    const bar = h("div", { class: `bar${failed ? " error" : ""}` });
    bar.style.left = `${(r.left * 100).toFixed(3)}%`;
    bar.style.width = `${(r.width * 100).toFixed(3)}%`;
    const toggle = h("button", {
      type: "button", class: "label", "aria-expanded": "false",
      title: `${sp.service}: ${sp.name}`,
      onclick: () => {
        detail.hidden = !detail.hidden;
        toggle.setAttribute("aria-expanded", String(!detail.hidden));
      },
    }, `${"· ".repeat(r.depth)}${sp.service ?? "?"}: ${sp.name}`);
    toggle.style.textAlign = "left";
    toggle.style.border = "none";
    toggle.style.background = "none";
    list.append(h("div", { role: "listitem", dataset: { span: sp.span_id } },
      h("div", { class: "row" }, toggle, h("div", { class: "track" }, bar), h("div", { class: "dur" }, ms(sp.duration_ms))),
      detail));
  }
  return list;
}
