// Pools: replicas, lag per partition, breaker states and rate limits.

import { get } from "./api.js";
import { h, jsonView, notice, show } from "./dom.js";
import { failure } from "./run.js";

/** Total lag of a pool's partitions. */
export function totalLag(pool) {
  return (pool.lag ?? []).reduce((sum, p) => sum + (p.lag ?? 0), 0);
}

function lagCell(pool) {
  const parts = pool.lag ?? [];
  if (!parts.length) return "—";
  return h("details", {},
    h("summary", {}, `${totalLag(pool)} in ${parts.length} partition${parts.length === 1 ? "" : "s"}`),
    h("ul", {}, parts.map((p) => h("li", { class: "mono" }, `p${p.partition}: ${p.lag}`))));
}

function breakersCell(breakers) {
  const entries = Object.entries(breakers ?? {});
  if (!entries.length) return "—";
  return h("ul", {}, entries.map(([k, v]) => h("li", {}, h("span", { class: "mono" }, k), ": ",
    typeof v === "object" && v !== null ? (v.state ?? JSON.stringify(v)) : String(v))));
}

export async function poolsPage(main) {
  const body = h("div", {});
  show(main, h("h1", {}, "Pools"), body);
  const load = async () => {
    try {
      const { pools } = await get("/v1/pools");
      show(body, pools.length ? h("table", { id: "pools" },
        h("thead", {}, h("tr", {}, ["Pool", "Topic", "Replicas", "Lag", "Breakers", "Rate limit"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, pools.map((p) => h("tr", { dataset: { pool: p.name } },
          h("td", {}, p.name), h("td", { class: "mono" }, p.topic), h("td", {}, String(p.replicas ?? "—")),
          h("td", {}, lagCell(p)), h("td", {}, breakersCell(p.breakers)),
          h("td", {}, p.rate_limit && Object.keys(p.rate_limit).length ? jsonView("limits", p.rate_limit) : "—")))))
        : notice("No pools."),
      h("div", { class: "toolbar" }, h("button", { type: "button", onclick: load }, "Refresh")));
    } catch (err) {
      show(body, failure("Pools", err));
    }
  };
  await load();
  return null;
}
