// The work queue: drafts oldest first, with channel, time waiting against the target and the
// suggested category. Redrawn from the server on every live event; waiting times tick locally.

import { get } from "./api.js";
import { $, clear, el, formatDuration, setText } from "./dom.js";

let items = [];
let clockOffset = 0; // server time minus browser time, in ms
let selected = null;
let onOpen = () => {};
let refreshTimer = null;

export function initQueue({ open }) {
  onOpen = open;
  const list = $("queue-list");
  list.addEventListener("keydown", (event) => {
    const buttons = [...list.querySelectorAll("button")];
    const index = buttons.indexOf(document.activeElement);
    if (index < 0) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const next = buttons[(index + (event.key === "ArrowDown" ? 1 : -1) + buttons.length) % buttons.length];
      next.focus();
    } else if (event.key === "Home") {
      event.preventDefault();
      buttons[0].focus();
    } else if (event.key === "End") {
      event.preventDefault();
      buttons[buttons.length - 1].focus();
    }
  });
  setInterval(tick, 5000);
}

export function focusQueue() {
  const first = $("queue-list").querySelector("button[aria-current=true]") || $("queue-list").querySelector("button");
  if (first) first.focus();
  else $("queue-title").scrollIntoView();
}

export function markSelected(number) {
  selected = number;
  for (const button of $("queue-list").querySelectorAll("button")) {
    button.setAttribute("aria-current", String(button.dataset.number === number));
  }
}

/** The oldest draft other than `done`, from a fresh look at the queue; null when none waits. */
export async function nextDraft(done) {
  await refresh();
  const next = items.find((item) => item.number !== done);
  return next ? next.number : null;
}

/** Debounced: a burst of events causes one reload. */
export function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 200);
}

export async function refresh() {
  const data = await get("/console/api/queue", { background: true });
  clockOffset = new Date(data.now).getTime() - Date.now();
  items = data.items;
  const list = $("queue-list");
  const focused = list.contains(document.activeElement) ? document.activeElement.dataset.number : null;
  clear(list);
  for (const item of items) list.append(render(item));
  $("queue-empty").hidden = items.length > 0;
  setText("queue-count", data.total);
  markSelected(selected);
  if (focused) {
    const again = list.querySelector(`button[data-number="${CSS.escape(focused)}"]`);
    (again || list.querySelector("button") || $("queue-title")).focus();
  }
  tick();
}

function render(item) {
  const suggestion = item.category || item.suggested_category;
  const button = el("button", {
    type: "button",
    attrs: { "data-number": item.number, "data-created": item.created_at, "data-target": item.target_seconds },
    on: { click: () => onOpen(item.number) },
  },
  el("span", { className: "q-number" }, item.number,
    el("span", { className: "tag", text: item.channel_label }),
    ...item.flag_labels.map((label) => el("span", { className: "tag flag", text: label }))),
  el("span", { className: "q-wait" }),
  el("span", { className: "q-excerpt", text: item.excerpt || "（无文字内容）" }),
  el("span", {
    className: "q-suggest",
    text: suggestion ? `${item.category ? "类别" : "建议类别"}：${suggestion.code} ${suggestion.name}` : "建议类别：无",
  }));
  return el("li", {}, button);
}

function tick() {
  const now = Date.now() + clockOffset;
  for (const button of $("queue-list").querySelectorAll("button")) {
    const waited = (now - new Date(button.dataset.created).getTime()) / 1000;
    const target = Number(button.dataset.target);
    button.classList.toggle("over", waited > target);
    button.classList.toggle("warn", waited <= target && waited > target * 0.8);
    button.querySelector(".q-wait").textContent = `已等待 ${formatDuration(waited)} / 目标 ${formatDuration(target)}`;
  }
}
