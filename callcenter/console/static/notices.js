// 督办通知: supervisor tasks (核实/核查 sent to grid supervisors by SMS), grouped by state with
// counts, in the queue's sidebar (all cases) and on a case's page (that case's tasks).
// Reloaded from the server on every `notice` event; waiting times tick locally.

import { get, query } from "./api.js";
import { $, clear, el, formatDuration, formatTime, setText } from "./dom.js";

// Escalated first: those need someone's attention now.
const GROUPS = ["escalated", "waiting", "answered"];
const SIDEBAR_LIMIT = 20;

let onOpen = () => {};
let clockOffset = 0; // server time minus browser time, in ms
let caseShown = null;

export function initNotices({ open }) {
  onOpen = open;
  setInterval(tick, 5000);
}

/** The sidebar: every case's tasks, newest first within each state. */
export async function refreshNotices() {
  const data = await get(`/console/api/notices${query({ state: "all", limit: SIDEBAR_LIMIT })}`,
    { background: true });
  render($("notice-groups"), $("notice-empty"), data, { withCase: true });
  setText("notice-summary", data.counts.sent ? `共 ${data.counts.sent} 条` : "");
}

/** A case's page: that case's tasks (few, so all of them). */
export async function loadCaseNotices(number) {
  caseShown = number;
  const data = await get(`/console/api/notices${query({ state: "all", case: number, limit: 200 })}`,
    { background: true });
  if (caseShown !== number) return; // another case was opened meanwhile
  render($("d-notice-groups"), $("d-notice-empty"), data, { withCase: false });
  setText("d-notice-summary", data.counts.sent ? `共 ${data.counts.sent} 条` : "");
}

export function shownCase() {
  return caseShown;
}

function render(host, empty, data, { withCase }) {
  clockOffset = new Date(data.now).getTime() - Date.now();
  clear(host);
  for (const state of GROUPS) {
    const items = data.items.filter((item) => item.state === state);
    const count = data.counts[state];
    if (!count) continue;
    const more = count > items.length
      ? el("p", { className: "hint", text: `仅显示最新 ${items.length} 条，共 ${count} 条` }) : null;
    host.append(el("section", { className: `n-group ${state}`, attrs: { "data-state": state } },
      el("h3", {}, data.state_labels[state], el("span", { className: "n-count", text: count })),
      el("ul", { className: "n-list" }, items.map((item) => renderItem(item, withCase))),
      more));
  }
  empty.hidden = data.counts.sent > 0;
  tick();
}

function renderItem(item, withCase) {
  const head = [el("span", { className: "tag", text: `${item.kind_label}任务` }),
    el("span", { className: "n-code", text: item.code })];
  if (withCase) {
    head.push(el("button", {
      type: "button", className: "link number", text: item.case_number,
      attrs: { title: `打开受理编号 ${item.case_number}` }, on: { click: () => onOpen(item.case_number) },
    }));
  }
  if (item.answer_label) {
    head.push(el("span", { className: `tag answer ${item.answer}`, text: item.answer_label }));
  }
  const who = [item.grid ? item.grid.name : "", `监督员 ${item.supervisor_name}`, item.supervisor_phone || ""]
    .filter(Boolean).join(" · ");
  const when = [`发送 ${formatTime(item.sent_at)}`];
  if (item.escalated_at) when.push(`升级 ${formatTime(item.escalated_at)}`);
  if (item.answered_at) {
    when.push(`回复 ${formatTime(item.answered_at)}（用时 ${formatDuration(item.waiting_seconds)}${item.late ? "，超时" : ""}）`);
  }
  return el("li", {
    className: "n-item",
    attrs: {
      "data-code": item.code, "data-state": item.state, "data-case": item.case_number,
      "data-sent": item.sent_at, "data-limit": item.limit_seconds,
    },
  },
  el("p", { className: "n-head" }, head),
  el("p", { className: "n-who", text: who }),
  el("p", { className: "n-when", text: when.join(" · ") }),
  item.state === "answered" ? null : el("p", { className: "n-wait" }),
  item.answer_text ? el("p", { className: "n-text", text: `回复原文：${item.answer_text}` }) : null,
  item.note ? el("p", { className: "n-text", text: `说明：${item.note}` }) : null);
}

/** Waiting tasks: time since the notice went out against the escalation limit. */
function tick() {
  const now = Date.now() + clockOffset;
  for (const item of document.querySelectorAll(".n-item[data-state=waiting], .n-item[data-state=escalated]")) {
    const waited = (now - new Date(item.dataset.sent).getTime()) / 1000;
    const limit = Number(item.dataset.limit);
    item.classList.toggle("over", waited > limit);
    item.classList.toggle("warn", waited <= limit && waited > limit * 0.8);
    const line = item.querySelector(".n-wait");
    if (line) line.textContent = `已等待 ${formatDuration(waited)} / 时限 ${formatDuration(limit)}`;
  }
}
