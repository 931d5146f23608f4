// DOM helpers. Every value goes in through textContent or setAttribute, never as markup,
// so a report containing <script> is shown as the text it is.

const SVG_NS = "http://www.w3.org/2000/svg";

/** el("li", {className, text, attrs: {...}, on: {click}}, ...children) */
export function el(tag, props = {}, ...children) {
  return build(document.createElement(tag), props, children);
}

export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), { attrs }, children);
}

function build(node, props, children) {
  const { className, text, attrs, on, ...rest } = props || {};
  if (className) node.setAttribute("class", className);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const [name, handler] of Object.entries(on || {})) node.addEventListener(name, handler);
  for (const [name, value] of Object.entries(rest)) node[name] = value;
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function $(id) {
  return document.getElementById(id);
}

export function setText(id, value) {
  $(id).textContent = value === null || value === undefined ? "" : String(value);
}

let timeZone = "Asia/Shanghai";
export function setTimeZone(tz) {
  timeZone = tz || timeZone;
}

export function formatTime(iso) {
  if (!iso) return "";
  return new Intl.DateTimeFormat("zh-CN", {
    timeZone, month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
    hour12: false,
  }).format(new Date(iso));
}

export function todayIso() {
  const parts = new Intl.DateTimeFormat("en-CA", { timeZone, year: "numeric", month: "2-digit", day: "2-digit" })
    .format(new Date());
  return parts; // en-CA formats as YYYY-MM-DD
}

export function formatDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h) return `${h}小时${m}分`;
  if (m) return `${m}分${r}秒`;
  return `${r}秒`;
}

export function formatPercent(rate) {
  return rate === null || rate === undefined ? "暂无数据" : `${(rate * 100).toFixed(1)}%`;
}
