// A Server-Sent Events parser for streams read with fetch(): EventSource cannot send
// an Authorization header, and the token must not go into a URL (logs, history).

/** Feed it text chunks; it calls onEvent({id, event, data}) for each complete event. */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.fields = { event: "", data: [], id: null };
    this.lastId = null;
  }

  push(chunk) {
    this.buffer += chunk;
    let nl;
    while ((nl = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      // A "\r" at the very end may be the first half of a "\r\n" split across chunks.
      if (nl === this.buffer.length - 1 && this.buffer[nl] === "\r") break;
      const line = this.buffer.slice(0, nl);
      const sep = this.buffer.startsWith("\r\n", nl) ? 2 : 1;
      this.buffer = this.buffer.slice(nl + sep);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      const f = this.fields;
      if (f.id !== null) this.lastId = f.id;
      if (f.data.length) {
        this.onEvent({ id: f.id ?? this.lastId, event: f.event || "message", data: f.data.join("\n") });
      }
      this.fields = { event: "", data: [], id: null };
      return;
    }
    if (line.startsWith(":")) return; // a comment: the heartbeat
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") this.fields.data.push(value);
    else if (name === "event") this.fields.event = value;
    else if (name === "id") this.fields.id = value;
  }
}
