// The console's only door to the server: the /v1 API with the operator's bearer token.

import { SseParser } from "./sse.js";

const KEY = "podium.token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An answer that is not 2xx; `unavailable` when the endpoint is not on this server. */
export class ApiError extends Error {
  constructor(status, detail, path) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.path = path;
  }
  get unavailable() { return this.status === 404 && this.routeMissing; }
}

function headers(extra = {}) {
  const t = token.get();
  return t ? { Authorization: `Bearer ${t}`, ...extra } : extra;
}

let onUnauthorized = () => {};
/** Called when the server answers 401 (a revoked or unknown token). */
export function whenUnauthorized(fn) { onUnauthorized = fn; }

async function request(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) {
    const err = new ApiError(r.status, data?.detail ?? r.statusText, path);
    // FastAPI's answer for a route it does not have is exactly {"detail": "Not Found"};
    // a missing run is "no such run". Only the first means "not on this server yet".
    err.routeMissing = r.status === 404 && data?.detail === "Not Found";
    if (r.status === 401) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);

/** A query string of the non-empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Follow /v1/events (read with fetch, for the Authorization header), reconnecting
 * with Last-Event-ID after a drop. Listeners get (type, data, id). `state` is told
 * "live", "reconnecting" or "stopped".
 */
export class Live {
  constructor() {
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.lastId = null;
    this.abort = null;
    this.running = false;
    this.generation = 0; // a stopped loop still winding down must not go on after a restart
  }

  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }
  onState(fn) { this.stateListeners.add(fn); }
  state(s) { for (const fn of this.stateListeners) fn(s); }

  start() {
    if (this.running) return;
    this.running = true;
    this.loop(++this.generation);
  }

  stop() {
    this.running = false;
    this.abort?.abort();
    this.lastId = null;
    this.state("stopped");
  }

  async loop(generation) {
    let delay = 500;
    const current = () => this.running && this.generation === generation;
    while (current()) {
      this.abort = new AbortController();
      try {
        const extra = this.lastId !== null ? { "Last-Event-ID": this.lastId } : {};
        const r = await fetch("/v1/events", { headers: headers(extra), signal: this.abort.signal });
        if (r.status === 401) { this.stop(); onUnauthorized(new ApiError(401, "", "/v1/events")); break; }
        if (r.status === 400) this.lastId = null; // an id this server did not send: start afresh
        if (!r.ok || !r.body) throw new Error(`events: ${r.status}`);
        this.state("live");
        delay = 500;
        const parser = new SseParser((e) => {
          if (!current()) return;
          if (e.id !== null) this.lastId = e.id;
          let data = e.data;
          try { data = JSON.parse(e.data); } catch { /* keep the text */ }
          for (const fn of this.listeners) {
            try { fn(e.event, data, e.id); } catch (err) { console.error(err); }
          }
        });
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.push(value);
        }
      } catch (err) {
        if (!current()) break;
      }
      if (!current()) break;
      this.state("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }
}

export const live = new Live();
