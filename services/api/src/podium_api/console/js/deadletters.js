// The dead-letter browser: topics, records grouped by error type, inspect, select,
// dry-run and replay (with a confirmation), and the audit of who replayed what.

import { ApiError, get, live, post, query } from "./api.js";
import { facts, h, jsonView, notice, show, when } from "./dom.js";
import { failure } from "./run.js";

const enc = encodeURIComponent;

/** Records grouped by error type, the biggest group first: [[type, records], ...]. */
export function byErrorType(records) {
  const groups = new Map();
  for (const r of records) {
    const key = r.error_type ?? "(no error type)";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(r);
  }
  return [...groups.entries()].sort((a, b) => b[1].length - a[1].length || a[0].localeCompare(b[0]));
}

function summaryTable(topics, onBrowse) {
  if (!topics.length) return notice("No dead letters. Nothing has failed for good.");
  return h("table", { id: "dlq-topics" },
    h("caption", { class: "visually-hidden" }, "Dead-letter topics"),
    h("thead", {}, h("tr", {}, ["Topic", "Records", "Oldest", "Newest", "By error", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, topics.map((t) => h("tr", { dataset: { topic: t.topic } },
      h("td", { class: "mono" }, t.topic),
      h("td", {}, String(t.count)),
      h("td", { class: "mono" }, when(t.oldest)),
      h("td", { class: "mono" }, when(t.newest)),
      h("td", {}, h("ul", {}, (t.groups ?? []).map((g) =>
        h("li", {}, `${g.count} × ${g.error_type ?? g.error_class ?? g.reason}`)))),
      h("td", {}, h("button", { type: "button", onclick: () => onBrowse(t.topic), "aria-label": `Browse ${t.topic}` }, "Browse"))))));
}

function recordDetail(r) {
  return h("div", { class: "notice", id: "dlq-record" },
    h("h3", {}, "Record ", h("span", { class: "mono" }, r.id)),
    facts([
      ["Locator", r.locator], ["Time", when(r.time)], ["Task", r.task_id],
      ["Error type", r.error_type], ["Reason", r.reason],
    ]),
    h("h4", {}, "Headers"),
    h("table", { class: "headers" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Header"), h("th", { scope: "col" }, "Value"))),
      h("tbody", {}, Object.entries(r.headers ?? {}).map(([k, v]) =>
        h("tr", {}, h("td", { class: "mono" }, k), h("td", { class: "mono" }, typeof v === "string" ? v : JSON.stringify(v)))))),
    r.value !== null && r.value !== undefined
      ? jsonView("Value", r.value, true)
      : h("details", { open: true }, h("summary", {}, "Value (not JSON)"), h("pre", { class: "json" }, r.value_text ?? "")));
}

function reportView(report) {
  const replayed = report.replayed ?? [];
  const skipped = report.skipped ?? [];
  const title = report.dry_run
    ? `Dry run: ${replayed.length} of ${report.selected} selected would be replayed, ${skipped.length} skipped.`
    : `Replayed ${replayed.length} of ${report.selected} selected; ${skipped.length} skipped.`;
  return h("div", { class: "notice", id: "replay-report", role: "status" },
    h("strong", {}, title),
    replayed.length ? h("ul", {}, replayed.map((r) =>
      h("li", { class: "mono" }, `${r.id} → ${r.to ?? "its topic"}${r.offset !== null && r.offset !== undefined ? ` @${r.offset}` : ""}${r.task_id ? ` (task ${r.task_id})` : ""}`))) : null,
    skipped.length ? jsonView("Skipped", skipped) : null);
}

function auditView(entries) {
  if (!entries.length) return notice("No replays or cancels recorded yet.");
  return h("table", { id: "audit" },
    h("thead", {}, h("tr", {}, ["When", "Who", "Action", "Target", "Detail"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, entries.map((e) => h("tr", {},
      h("td", { class: "mono" }, when(e.at)), h("td", {}, e.who), h("td", {}, e.action),
      h("td", { class: "mono" }, e.target), h("td", {}, jsonView("detail", e.detail))))));
}

export async function deadLettersPage(main) {
  const summary = h("div", {});
  const browser = h("section", { "aria-labelledby": "h-records", hidden: true });
  const audit = h("div", {});
  let topic = null;
  let records = [];
  const selected = new Set();
  const filters = { error_type: "", task_id: "" };

  show(main,
    h("h1", {}, "Dead letters"),
    summary,
    browser,
    h("section", { "aria-labelledby": "h-audit" }, h("h2", { id: "h-audit" }, "Recent replays and cancels"), audit));

  async function loadSummary() {
    try {
      const data = await get("/v1/dead-letters");
      show(summary, summaryTable(data.topics, browse));
    } catch (err) {
      show(summary, err instanceof ApiError && err.status === 503
        ? notice("This server reads no dead letters.", "unavailable")
        : failure("The dead-letter summary", err));
    }
  }

  async function loadAudit() {
    try {
      show(audit, auditView((await get("/v1/audit?limit=20")).entries));
    } catch (err) {
      show(audit, err instanceof ApiError && err.status === 403
        ? notice("Only operators see the audit.", "unavailable") : failure("The audit", err));
    }
  }

  const detail = h("div", {});
  const report = h("div", {});
  const list = h("div", { id: "dlq-records" });
  const count = h("span", { class: "muted", role: "status", "aria-live": "polite" });
  const dryRun = h("button", { type: "button", id: "dry-run", onclick: () => replay(true) }, "Dry run");
  const replayBtn = h("button", { type: "button", id: "replay", class: "danger", onclick: () => confirmReplay() }, "Replay…");
  const confirmText = h("p", {});
  const dialog = h("dialog", { id: "confirm-replay", "aria-labelledby": "confirm-title" },
    h("h2", { id: "confirm-title" }, "Replay dead letters?"),
    confirmText,
    h("form", { method: "dialog", class: "toolbar" },
      h("button", { value: "cancel", autofocus: true }, "Cancel"),
      h("button", { value: "replay", class: "danger", id: "confirm-replay-yes" }, "Replay")));
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "replay") replay(false);
    else replayBtn.focus();
  });

  const updateSelection = () => {
    count.textContent = `${selected.size} selected`;
    dryRun.disabled = replayBtn.disabled = selected.size === 0;
  };

  function renderRecords() {
    if (!records.length) { show(list, notice("No records match.")); updateSelection(); return; }
    show(list, byErrorType(records).map(([type, rs]) => {
      const all = h("input", {
        type: "checkbox", id: `all-${type}`, checked: rs.every((r) => selected.has(r.id)),
        onchange: () => { for (const r of rs) all.checked ? selected.add(r.id) : selected.delete(r.id); renderRecords(); },
      });
      return h("fieldset", { class: "group", dataset: { errorType: type } },
        h("legend", {}, h("label", { for: `all-${type}`, class: "inline" }, all, ` ${type} (${rs.length})`)),
        h("table", {}, h("tbody", {}, rs.map((r) => h("tr", { dataset: { id: r.id } },
          h("td", {}, h("input", {
            type: "checkbox", checked: selected.has(r.id), "aria-label": `select ${r.id}`,
            onchange: (ev) => { ev.target.checked ? selected.add(r.id) : selected.delete(r.id); updateSelection(); },
          })),
          h("td", { class: "mono" }, r.task_id ?? "—"),
          h("td", { class: "mono" }, when(r.time)),
          h("td", {}, r.reason ?? ""),
          h("td", { class: "mono" }, r.locator),
          h("td", {}, h("button", {
            type: "button", "aria-label": `Inspect ${r.id}`,
            onclick: () => { show(detail, recordDetail(r)); detail.querySelector("h3").tabIndex = -1; detail.querySelector("h3").focus(); },
          }, "Inspect")))))));
    }));
    updateSelection();
  }

  async function loadRecords() {
    try {
      const data = await get(`/v1/dead-letters/${enc(topic)}/records${query({ ...filters, limit: 200 })}`);
      records = data.records;
      for (const id of [...selected]) if (!records.some((r) => r.id === id)) selected.delete(id);
      renderRecords();
    } catch (err) {
      records = [];
      show(list, failure("Browsing records", err));
      updateSelection();
    }
  }

  async function browse(name) {
    topic = name;
    selected.clear();
    show(detail);
    show(report);
    const form = h("form", {
      class: "filters", "aria-label": "Filter records",
      onsubmit: (ev) => {
        ev.preventDefault();
        const data = new FormData(form);
        for (const k of Object.keys(filters)) filters[k] = String(data.get(k) ?? "").trim();
        loadRecords();
      },
    },
      h("label", { for: "r-error_type" }, "Error type", h("input", { id: "r-error_type", name: "error_type", type: "search", value: filters.error_type })),
      h("label", { for: "r-task_id" }, "Task id", h("input", { id: "r-task_id", name: "task_id", type: "search", value: filters.task_id })),
      h("button", { type: "submit" }, "Apply"));
    const heading = h("h2", { id: "h-records", tabindex: "-1" }, "Records of ", h("span", { class: "mono" }, name));
    show(browser, heading, form, h("div", { class: "toolbar" }, dryRun, replayBtn, count), report, list, detail, dialog);
    browser.hidden = false;
    await loadRecords();
    heading.focus();
  }

  function confirmReplay() {
    confirmText.textContent = `${selected.size} record${selected.size === 1 ? "" : "s"} of ${topic} will be sent back to ` +
      "the topic they failed on. Replay is idempotent: a record replayed before is skipped.";
    dialog.returnValue = ""; // Escape keeps the last value: never replay on a stale "replay"
    dialog.showModal();
  }

  async function replay(dry) {
    const body = { ids: [...selected], error_type: null, task_id: null, since: null, limit: null, dry_run: dry, to: null };
    try {
      const result = await post(`/v1/dead-letters/${enc(topic)}/replay`, body);
      show(report, reportView(result));
      if (!dry) { selected.clear(); await Promise.all([loadRecords(), loadSummary(), loadAudit()]); }
    } catch (err) {
      show(report, err instanceof ApiError && err.status === 403
        ? notice("Replaying needs the operator role.", "error")
        : failure("Replay", err));
    }
    report.querySelector("[role]")?.setAttribute("tabindex", "-1");
    report.querySelector("[role]")?.focus();
  }

  await Promise.all([loadSummary(), loadAudit()]);

  let pending = null;
  return live.on((type) => {
    if (type !== "dead_letter" || pending) return;
    pending = setTimeout(async () => {
      pending = null;
      await loadSummary();
      if (topic) await loadRecords();
    }, 300);
  });
}
