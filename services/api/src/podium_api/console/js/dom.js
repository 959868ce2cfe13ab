// Small DOM helpers. Everything is built with createElement and textContent (never
// innerHTML), so text from a run (input, errors, headers) can never become markup.

const SVG = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (typeof v === "boolean" && k in el) el[k] = v; // checked, hidden, selected, open…
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of [children].flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: h("a", {href: "#/runs"}, "Runs"). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG, tag), attrs, children);
}

/** Replace what a container shows. */
export function show(container, ...children) {
  container.replaceChildren();
  build(container, {}, children);
  return container;
}

/** A status badge. */
export function badge(status) {
  return h("span", { class: `status status-${status}` }, status ?? "unknown");
}

/** "2026-12-02 01:02:03" in UTC from an ISO time, or "—". */
export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** A duration in ms, readable. */
export function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(2)} s`;
  return `${(value / 60000).toFixed(1)} min`;
}

/** A collapsible, pretty-printed JSON view. */
export function jsonView(title, value, open = false) {
  const text = value === undefined ? "null" : JSON.stringify(value, null, 2);
  return h("details", { class: "json-view", open },
    h("summary", {}, title),
    h("pre", { class: "json", tabindex: "0", "aria-label": title }, text));
}

/** A notice: kind "unavailable" (404 from an endpoint not on this server), "error", or plain. */
export function notice(text, kind = "") {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** A definition list of label/value pairs. */
export function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
}
