// A WebSocket that reconnects by itself, with exponential backoff and jitter.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10000;
// A connection that stayed up this long was a success: the next failure
// starts the backoff again from the first delay.
const STABLE_AFTER_MS = 5000;

export function websocketUrl(path) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${path}`;
}

export class ReconnectingSocket {
  /**
   * @param {string} path  the endpoint, e.g. "/ws/v1/dashboard/"
   * @param {object} handlers  onopen(socket), onmessage(data), onstatus(state, detail)
   * @param {number[]} finalCodes  close codes after which trying again cannot help
   */
  constructor(path, handlers, finalCodes = []) {
    this.url = websocketUrl(path);
    this.handlers = handlers;
    this.finalCodes = new Set(finalCodes);
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000);
  }

  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  get open() {
    return Boolean(this.socket && this.socket.readyState === WebSocket.OPEN);
  }

  connect() {
    clearTimeout(this.timer);
    this.status(this.attempt === 0 ? "connecting" : "reconnecting", { attempt: this.attempt });
    let openedAt = 0;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("open", () => {
      openedAt = Date.now();
      this.handlers.onopen?.(this);
    });
    socket.addEventListener("message", (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (error) {
        console.warn("Ignoring a frame that is not JSON", error);
        return;
      }
      this.handlers.onmessage?.(data, this);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      if (this.stopped) return;
      if (this.finalCodes.has(event.code)) {
        this.status("offline", { code: event.code, reason: event.reason });
        return;
      }
      if (openedAt && Date.now() - openedAt > STABLE_AFTER_MS) this.attempt = 0;
      this.attempt += 1;
      const base = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** (this.attempt - 1));
      const delay = Math.round(base * (0.75 + Math.random() * 0.5));
      this.status("reconnecting", { attempt: this.attempt, delayMs: delay, code: event.code, retryAt: Date.now() + delay });
      this.timer = setTimeout(() => this.connect(), delay);
    });
  }

  status(state, detail) {
    this.handlers.onstatus?.(state, detail || {});
  }
}
