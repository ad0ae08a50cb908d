// The try-it panel: one prediction at a time through the same protocol every
// client uses (/ws/v1/predict/, authenticated by an `auth` first message with
// the short-lived key the dashboard page was given).

import { ReconnectingSocket } from "./socket.js";
import { el, formatMs } from "./format.js";

const CLOSE_BAD_KEY = 4401;
const SHOWN_PROBABILITIES = 5;
const TIMEOUT_MS = 10000;

export class TryIt {
  constructor(config, elements) {
    this.config = config;
    this.e = elements;
    this.models = {};
    this.pending = null;
    this.sequence = 0;
  }

  start() {
    this.socket = new ReconnectingSocket(this.config.predictPath, {
      onopen: (socket) => socket.send({ type: "auth", token: this.config.apiKey }),
      onmessage: (message) => this.onMessage(message),
      onstatus: (state, detail) => this.onStatus(state, detail),
    }, [CLOSE_BAD_KEY]).start();
    this.e.model.addEventListener("change", () => this.buildForm());
    this.e.example.addEventListener("click", () => this.fill(this.example(this.selected())));
    this.e.zeros.addEventListener("click", () => this.fill(null));
    this.e.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.predict();
    });
    return this;
  }

  selected() {
    return this.e.model.value;
  }

  setStatus(text) {
    this.e.status.textContent = text;
  }

  onStatus(state, detail) {
    if (state === "offline") {
      this.setStatus("key expired");
      this.e.submit.disabled = true;
      this.showError("auth", "The panel's key has expired or was revoked: reload the page to get a new one.");
    } else if (state === "reconnecting") {
      this.setStatus("reconnecting…");
      this.e.submit.disabled = true;
      if (this.pending) this.fail({ code: "disconnected", message: "The connection dropped before the reply came; try again." });
    } else if (state === "connecting") {
      this.setStatus("connecting…");
    }
  }

  onMessage(message) {
    if (message.type === "ready" || message.type === "models") {
      this.setModels(message.models);
      this.setStatus(`protocol v${message.protocol ?? 1} · ready`);
      this.e.submit.disabled = !this.selected();
    } else if (message.type === "prediction" || message.type === "error") {
      if (!this.pending || message.id !== this.pending.id) return;
      if (message.type === "prediction") this.showPrediction(message);
      else this.fail(message.error);
    }
  }

  setModels(models) {
    const previous = this.selected();
    this.models = models || {};
    const names = Object.keys(this.models).sort();
    if (!names.length) {
      this.e.model.replaceChildren(el("option", { value: "" }, "No models available"));
      this.e.model.disabled = true;
      this.e.inputs.replaceChildren(el("p", { class: "empty-inline" }, "No model serves yet. Load the demo models with manage.py load_demo_models."));
      return;
    }
    this.e.model.replaceChildren(...names.map((name) => {
      const version = this.models[name].version;
      return el("option", { value: name }, version == null ? `${name} (no active version)` : `${name} · v${version}`);
    }));
    this.e.model.disabled = false;
    this.e.model.value = names.includes(previous) ? previous : names[0];
    if (this.selected() !== previous || !this.e.inputs.childElementCount) this.buildForm();
  }

  example(name) {
    const inputs = this.models[name]?.inputs || [];
    const row = this.config.examples[name];
    return row && row.length === inputs.length ? row : null;
  }

  buildForm() {
    const name = this.selected();
    const model = this.models[name];
    if (!model) return;
    this.e.outputs.textContent = `${model.inputs.length} features → ${model.outputs}`;
    this.e.inputs.replaceChildren(...model.inputs.map((feature, i) => el("label", { title: feature },
      el("span", {}, feature),
      el("input", { type: "text", inputmode: "decimal", name: feature, "data-index": i, "aria-label": feature, spellcheck: "false" }))));
    this.fill(this.example(name));
    this.e.result.replaceChildren();
    this.e.result.className = "tryit-result";
  }

  fill(row) {
    const fields = this.e.inputs.querySelectorAll("input");
    fields.forEach((field, i) => { field.value = row ? String(row[i]) : "0"; });
  }

  readRow() {
    const row = [];
    for (const field of this.e.inputs.querySelectorAll("input")) {
      const text = field.value.trim();
      const value = Number(text);
      if (text === "" || !Number.isFinite(value)) {
        field.focus();
        throw new Error(`${field.name} must be a number, not "${text}".`);
      }
      row.push(value);
    }
    return row;
  }

  predict() {
    const name = this.selected();
    if (!name) return;
    let row;
    try {
      row = this.readRow();
    } catch (error) {
      this.showError("invalid_input", error.message);
      return;
    }
    this.sequence += 1;
    const id = `try-${this.sequence}`;
    const frame = { type: "predict", id, model: name, inputs: [row] };
    if (!this.socket.send(frame)) {
      this.showError("disconnected", "Not connected to the server yet; try again in a moment.");
      return;
    }
    clearTimeout(this.pending?.timer);
    this.pending = {
      id,
      sentAt: performance.now(),
      timer: setTimeout(() => this.fail({ code: "timeout", message: "No reply within 10 s." }), TIMEOUT_MS),
    };
    this.e.submit.disabled = true;
    this.e.submit.textContent = "Predicting…";
  }

  finish() {
    const roundTrip = this.pending ? performance.now() - this.pending.sentAt : null;
    clearTimeout(this.pending?.timer);
    this.pending = null;
    this.e.submit.disabled = !this.socket.open;
    this.e.submit.textContent = "Predict";
    return roundTrip;
  }

  fail(error) {
    this.finish();
    this.showError(error.code, error.message);
  }

  showError(code, message) {
    this.e.result.className = "tryit-result error";
    this.e.result.replaceChildren(
      el("div", { class: "result-head" }, el("span", { class: "badge bad" }, code), el("span", {}, message)));
  }

  showPrediction(message) {
    const roundTrip = this.finish();
    const output = message.outputs[0] || {};
    const timing = message.timing || {};
    const parts = [
      `${message.model} v${message.version}`,
      `server ${formatMs(timing.total_ms)}`,
      `queue ${formatMs(timing.queue_ms)}`,
      `model ${formatMs(timing.inference_ms)}`,
      `batch of ${message.batch_size} row${message.batch_size === 1 ? "" : "s"}`,
    ];
    if (roundTrip != null) parts.push(`round trip ${formatMs(roundTrip)}`);
    const head = el("div", { class: "result-head" });
    const children = [head];
    if ("label" in output) {
      head.append(el("span", { class: "result-value", "data-result": "label" }, String(output.label)));
      const probabilities = Object.entries(output.probabilities || {}).sort((a, b) => b[1] - a[1]).slice(0, SHOWN_PROBABILITIES);
      for (const [label, p] of probabilities) {
        children.push(el("div", { class: "bar-row" },
          el("span", { class: "name" }, label),
          el("div", { class: "bar" }, el("span", { style: `width:${Math.max(0, Math.min(1, p)) * 100}%` })),
          el("span", { class: "value" }, `${(p * 100).toFixed(1)}%`)));
      }
    } else {
      const value = output.value;
      const text = typeof value === "number" ? String(Number(value.toPrecision(6))) : JSON.stringify(value);
      head.append(el("span", { class: "result-value", "data-result": "value" }, text));
    }
    head.append(el("span", { class: "badge ok" }, "ok"));
    children.push(el("div", { class: "result-timing" }, parts.join(" · ")));
    this.e.result.className = "tryit-result";
    this.e.result.replaceChildren(...children);
  }
}
