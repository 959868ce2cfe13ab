// The runs list: filters, pages, and live updates from /v1/events.

import { get, live, query } from "./api.js";
import { badge, h, notice, show, when } from "./dom.js";

const STATUSES = ["", "submitted", "accepted", "completed", "failed", "cancelled", "rejected"];
const filters = { status: "", workflow: "", tenant: "", q: "" }; // kept across pages

/** Set the runs list's filters (the others cleared), before navigating to it. */
export function filterRuns(f) {
  for (const k of Object.keys(filters)) filters[k] = f[k] ?? "";
}

/** Whether a run (as /v1/runs lists it) passes the filters, as the server would. */
export function matches(run, f) {
  if (f.status && run.status !== f.status) return false;
  if (f.workflow && run.workflow !== f.workflow) return false;
  if (f.tenant && run.tenant !== f.tenant) return false;
  if (f.q && !run.task_id.includes(f.q)) return false;
  return true;
}

/** Newest first, as the server orders them: (created_at, task_id) descending. */
export function newerFirst(a, b) {
  if (a.created_at !== b.created_at) return a.created_at < b.created_at ? 1 : -1;
  return a.task_id < b.task_id ? 1 : a.task_id > b.task_id ? -1 : 0;
}

function duration(run) {
  if (!run.finished_at) return "—";
  const d = (new Date(run.finished_at) - new Date(run.created_at)) / 1000;
  return `${d.toFixed(d < 10 ? 2 : 0)} s`;
}

function row(run) {
  return h("tr", { dataset: { taskId: run.task_id } },
    h("td", { class: "mono" }, h("a", { href: `#/runs/${encodeURIComponent(run.task_id)}` }, run.task_id)),
    h("td", {}, badge(run.status)),
    h("td", {}, run.workflow ?? "—", run.workflow_version ? h("span", { class: "muted" }, ` v${run.workflow_version}`) : null),
    h("td", {}, run.tenant ?? "—"),
    h("td", {}, run.subject ?? "—"),
    h("td", { class: "mono" }, when(run.created_at)),
    h("td", { class: "mono" }, duration(run)),
    h("td", {}, run.dlq ? "dead-lettered" : run.error ? String(run.error.type ?? run.error.message ?? "error") : ""));
}

export async function runsPage(main) {
  let runs = [];
  let cursor = null;
  const body = h("tbody", {});
  const count = h("p", { class: "muted", role: "status", "aria-live": "polite" });
  const more = h("button", { type: "button", hidden: true, onclick: () => load(false) }, "Load more");
  const message = h("div", {});

  const render = () => {
    show(body, runs.map(row));
    count.textContent = runs.length === 0 ? "No runs match." : `${runs.length} run${runs.length === 1 ? "" : "s"} shown`;
    more.hidden = cursor === null;
  };

  async function load(fresh) {
    try {
      const page = await get(`/v1/runs${query({ ...filters, limit: 50, cursor: fresh ? null : cursor })}`);
      runs = fresh ? page.items : runs.concat(page.items);
      cursor = page.next_cursor;
      show(message);
      render();
    } catch (err) {
      show(message, notice(`Could not list runs: ${err.message}`, "error"));
    }
  }

  const field = (name, label, control) => h("label", { for: `f-${name}` }, label, control);
  const input = (name, placeholder) => h("input", {
    id: `f-${name}`, name, value: filters[name], placeholder, type: "search", autocomplete: "off",
  });
  const status = h("select", { id: "f-status", name: "status" },
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s || "any")));
  const form = h("form", {
    class: "filters", role: "search", "aria-label": "Filter runs",
    onsubmit: (ev) => {
      ev.preventDefault();
      const data = new FormData(form);
      for (const k of Object.keys(filters)) filters[k] = String(data.get(k) ?? "").trim();
      load(true);
    },
  },
    field("status", "Status", status),
    field("workflow", "Workflow", input("workflow", "any")),
    field("tenant", "Tenant", input("tenant", "any")),
    field("q", "Task id contains", input("q", "")),
    h("button", { type: "submit", class: "primary" }, "Apply"));
  status.addEventListener("change", () => form.requestSubmit());

  show(main,
    h("h1", {}, "Runs"),
    form,
    message,
    count,
    h("table", { id: "runs" },
      h("caption", { class: "visually-hidden" }, "Runs, newest first; updated live"),
      h("thead", {}, h("tr", {},
        ["Task", "Status", "Workflow", "Tenant", "Subject", "Created (UTC)", "Took", "Problem"]
          .map((t) => h("th", { scope: "col" }, t)))),
      body),
    h("div", { class: "toolbar" }, more));

  await load(true);

  return live.on((type, run) => {
    if (type !== "run" || typeof run !== "object") return;
    const at = runs.findIndex((r) => r.task_id === run.task_id);
    if (!matches(run, filters)) {
      if (at >= 0) { runs.splice(at, 1); render(); }
      return;
    }
    if (at >= 0) runs[at] = run;
    else runs.push(run);
    runs.sort(newerFirst);
    render();
  });
}
