// Workflows and their versions.

import { get } from "./api.js";
import { h, jsonView, notice, show } from "./dom.js";
import { failure } from "./run.js";
import { filterRuns } from "./runs.js";

function version(v) {
  if (typeof v !== "object" || v === null) return h("li", {}, `v${v}`);
  const label = `v${v.version ?? "?"}${v.steps ? ` · ${v.steps.length ?? v.steps} steps` : ""}`;
  return h("li", {}, jsonView(label, v));
}

export async function workflowsPage(main) {
  const body = h("div", {});
  show(main, h("h1", {}, "Workflows"), body);
  try {
    const { workflows } = await get("/v1/workflows");
    show(body, workflows.length ? h("table", { id: "workflows" },
      h("thead", {}, h("tr", {}, ["Workflow", "Versions"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, workflows.map((w) => h("tr", { dataset: { workflow: w.name } },
        h("td", {}, h("a", { href: "#/runs", onclick: () => filterRuns({ workflow: w.name }), title: `runs of ${w.name}` }, w.name)),
        h("td", {}, h("ul", {}, (w.versions ?? []).map(version)))))))
      : notice("No workflows."));
  } catch (err) {
    show(body, failure("Workflows", err));
  }
  return null;
}
