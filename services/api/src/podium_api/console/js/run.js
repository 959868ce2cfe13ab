// One run: facts, the steps DAG, the history timeline, the trace waterfall, JSON views.

import { ApiError, get, live } from "./api.js";
import { badge, facts, h, jsonView, ms, notice, show, when } from "./dom.js";
import { dagSvg } from "./dag.js";
import { waterfallView } from "./waterfall.js";

const enc = encodeURIComponent;

/** What to show for an optional endpoint that failed: "not available" on a 404 route. */
export function failure(what, err) {
  if (err instanceof ApiError && err.unavailable) {
    return notice(`${what} is not available on this server.`, "unavailable");
  }
  return notice(`Could not load ${what.toLowerCase()}: ${err.message}`, "error");
}

function stepsTable(steps) {
  return h("table", { id: "steps" },
    h("caption", { class: "visually-hidden" }, "Steps"),
    h("thead", {}, h("tr", {}, ["Step", "Status", "Depends on", "Pool", "Attempts", "Last attempt", "Error"]
      .map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, steps.map((st) => h("tr", { id: `step-${st.step_id}`, tabindex: "-1", dataset: { step: st.step_id } },
      h("td", { class: "mono" }, st.step_id),
      h("td", {}, badge(st.status)),
      h("td", { class: "mono" }, (st.depends_on ?? []).join(", ") || "—"),
      h("td", {}, st.pool ?? "—"),
      h("td", {}, String(st.attempts)),
      h("td", {}, ms(st.duration_ms)),
      h("td", {}, st.error ? `${st.error.type ?? ""} ${st.error.message ?? ""}`.trim() : "")))));
}

function historyView(history) {
  if (!history.entries.length) return notice("No history yet.");
  return h("ol", { class: "timeline", id: "history" }, history.entries.map((e) => h("li", {},
    h("span", { class: "when mono" }, when(e.at)),
    h("strong", {}, e.kind),
    e.step ? h("span", { class: "mono" }, ` ${e.step}`) : null,
    e.cause ? h("span", {}, ` — ${e.cause}`) : null,
    e.next_action ? h("span", { class: "muted" }, ` → ${e.next_action}`) : null,
    e.detail && Object.keys(e.detail).length ? jsonView("detail", e.detail) : null)));
}

export async function runPage(main, taskId) {
  const head = h("div", {});
  const dag = h("div", {});
  const history = h("div", {});
  const trace = h("div", {});
  const data = h("div", {});
  show(main,
    h("p", {}, h("a", { href: "#/runs" }, "← Runs")),
    h("h1", {}, "Run ", h("span", { class: "mono" }, taskId)),
    head,
    h("section", { "aria-labelledby": "h-steps" }, h("h2", { id: "h-steps" }, "Steps"), dag),
    h("section", { "aria-labelledby": "h-data" }, h("h2", { id: "h-data" }, "Input and output"), data),
    h("div", { class: "grid2" },
      h("section", { "aria-labelledby": "h-history" }, h("h2", { id: "h-history" }, "History"), history),
      h("section", { "aria-labelledby": "h-trace" }, h("h2", { id: "h-trace" }, "Trace"), trace)));

  const selectStep = (id) => {
    const tr = document.getElementById(`step-${id}`);
    for (const r of main.querySelectorAll("#steps tr[aria-current]")) r.removeAttribute("aria-current");
    if (tr) { tr.setAttribute("aria-current", "true"); tr.focus(); }
  };

  async function loadRun() {
    let run;
    try {
      run = await get(`/v1/runs/${enc(taskId)}`);
    } catch (err) {
      show(head, err instanceof ApiError && err.status === 404
        ? notice("No such run (or not one of your tenants').", "error")
        : notice(`Could not load the run: ${err.message}`, "error"));
      return null;
    }
    const usage = run.usage
      ? `${run.usage.tokens_in ?? 0} in / ${run.usage.tokens_out ?? 0} out tokens, $${Number(run.usage.cost_usd ?? 0).toFixed(4)}`
      : "—";
    show(head, facts([
      ["Status", badge(run.status)],
      ["Workflow", `${run.workflow ?? "—"}${run.workflow_version ? ` v${run.workflow_version}` : ""}`],
      ["Tenant", run.tenant],
      ["Subject", run.subject],
      ["Created", when(run.created_at)],
      ["Finished", when(run.finished_at)],
      ["Usage", usage],
      ["Error", run.error ? `${run.error.type ?? ""} ${run.error.message ?? ""}`.trim() : null],
      ["Dead letter", run.dlq ? h("a", { href: "#/dead-letters" }, run.dlq.topic ?? "yes") : null],
    ]));
    if (run.steps.length) {
      show(dag, h("div", { class: "dag" }, dagSvg(run.steps, selectStep)), stepsTable(run.steps));
    } else {
      show(dag, notice("No step has reported yet."));
    }
    show(data, jsonView("Input", run.input, true), jsonView("Output", run.output, true),
      run.error ? jsonView("Error", run.error, true) : null);
    return run;
  }

  async function loadHistory() {
    try {
      show(history, historyView(await get(`/v1/runs/${enc(taskId)}/history`)));
    } catch (err) {
      show(history, failure("History", err));
    }
  }

  async function loadTrace() {
    try {
      const t = await get(`/v1/runs/${enc(taskId)}/trace`);
      show(trace, t.spans.length
        ? [h("p", { class: "muted" }, `${t.spans.length} spans from ${t.source === "otlp" ? "the OTLP backend" : "the local span store"}; `,
            `trace ${t.trace_ids.join(", ")}`), waterfallView(t.spans)]
        : notice("No spans recorded for this run."));
    } catch (err) {
      show(trace, failure("Trace", err));
    }
  }

  const run = await loadRun();
  if (!run) return null;
  await Promise.all([loadHistory(), loadTrace()]);

  let pending = null;
  return live.on((type, changed) => {
    if (type !== "run" || changed?.task_id !== taskId || pending) return;
    pending = setTimeout(async () => {
      pending = null;
      await loadRun();
      await Promise.all([loadHistory(), loadTrace()]);
    }, 150);
  });
}
