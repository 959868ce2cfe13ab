// The console's shell: sign-in, the hash router, the live connection's state.

import { ApiError, get, live, token, whenUnauthorized } from "./api.js";
import { h, notice, show } from "./dom.js";
import { runsPage } from "./runs.js";
import { runPage } from "./run.js";
import { deadLettersPage } from "./deadletters.js";
import { poolsPage } from "./pools.js";
import { workflowsPage } from "./workflows.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOut = document.getElementById("sign-out");
const liveState = document.getElementById("live");

const LIVE_TEXT = { live: "● live", reconnecting: "○ reconnecting…", stopped: "" };
live.onState((s) => { liveState.textContent = LIVE_TEXT[s] ?? ""; });

let leave = null; // the current page's clean-up (unsubscribe from live events)
let active = false; // signed in: a 401 then means the token was revoked

function signedIn(yes) {
  active = yes;
  nav.hidden = !yes;
  signOut.hidden = !yes;
  if (yes) live.start(); else live.stop();
}

function signInPage(message) {
  signedIn(false);
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", "aria-describedby": "token-help",
  });
  const error = h("div", { id: "sign-in-error" });
  const form = h("form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      token.set(value);
      try {
        await get("/v1/runs?limit=1");
      } catch (err) {
        token.clear();
        show(error, notice(err instanceof ApiError && err.status === 401
          ? "That token is unknown or revoked." : `The API did not answer: ${err.message}`, "error"));
        input.focus();
        return;
      }
      if (!location.hash || location.hash === "#/sign-in") location.hash = "#/runs";
      else route();
    },
  },
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { id: "token-help", class: "muted" },
      "A bearer token from `podium up` or `python -m podium_api token create`. ",
      "It is kept in this tab's session storage only."),
    h("div", {}, h("button", { type: "submit", class: "primary" }, "Sign in")),
    error);
  show(main, h("section", { class: "signin" }, h("h1", {}, "Sign in"), message ? notice(message) : null, form));
  input.focus();
}

const ROUTES = [
  [/^#\/runs\/(.+)$/, "runs", (m) => runPage(main, decodeURIComponent(m[1]))],
  [/^#\/runs\/?$/, "runs", () => runsPage(main)],
  [/^#\/dead-letters\/?$/, "dead-letters", () => deadLettersPage(main)],
  [/^#\/pools\/?$/, "pools", () => poolsPage(main)],
  [/^#\/workflows\/?$/, "workflows", () => workflowsPage(main)],
];

async function route() {
  leave?.();
  leave = null;
  if (!token.get()) { signInPage(); return; }
  signedIn(true);
  const hash = location.hash || "#/runs";
  for (const [re, section, page] of ROUTES) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of nav.querySelectorAll("a")) {
      if (a.dataset.section === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    try {
      leave = (await page(m)) ?? null;
    } catch (err) {
      show(main, notice(`This page failed: ${err.message}`, "error"));
    }
    return;
  }
  location.hash = "#/runs";
}

whenUnauthorized(() => {
  if (!active) return; // the sign-in form says it itself
  token.clear();
  signInPage("The token was refused; sign in again.");
});

// The skip link's #main would be taken for a route: move the focus instead.
document.querySelector(".skip-link").addEventListener("click", (ev) => {
  ev.preventDefault();
  main.focus();
});

signOut.addEventListener("click", () => {
  token.clear();
  location.hash = "#/sign-in";
  signInPage("Signed out.");
});

window.addEventListener("hashchange", () => {
  route().then(() => {
    // Move focus to the new page, as a page load would, for keyboard and screen readers.
    const heading = main.querySelector("h1");
    if (heading) { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
  });
});
route();
