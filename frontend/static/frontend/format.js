// Small DOM and number-formatting helpers shared by the dashboard's modules.

/** Build an element: el("td", {class: "num"}, "12", otherNode). Strings become text, never HTML. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value == null) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === "") continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const oneDecimal = new Intl.NumberFormat(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
const twoDecimals = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

export function formatCount(n) {
  if (n == null) return "–";
  return Math.abs(n) >= 1e6 ? compact.format(n) : integer.format(n);
}

export function formatRate(n) {
  if (n == null) return "–";
  if (n === 0) return "0";
  if (n < 10) return oneDecimal.format(n);
  return Math.abs(n) >= 1e6 ? compact.format(n) : integer.format(n);
}

export function formatMs(ms, unit = true) {
  if (ms == null) return "–";
  const text = ms < 10 ? twoDecimals.format(ms) : ms < 100 ? oneDecimal.format(ms) : integer.format(ms);
  return unit ? `${text} ms` : text;
}

export function formatDuration(seconds) {
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
}

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

/** A Unix time in seconds as the local wall-clock time. */
export function clockTime(unixSeconds) {
  return clock.format(new Date(unixSeconds * 1000));
}
