// The shift leader's dashboard: today's figures, the evaluation figures of a chosen period,
// and bar charts drawn as inline SVG (no chart library, nothing to build).

import { get, query } from "./api.js";
import { $, clear, el, formatDuration, formatPercent, formatTime, setText, svg, todayIso } from "./dom.js";

const NONE = "暂无数据";
let timer = null;

export function initDashboard() {
  $("period-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load().catch(() => {});
  });
}

export function startDashboard() {
  if (!$("period-from").value) $("period-from").value = todayIso();
  if (!$("period-to").value) $("period-to").value = todayIso();
  load().catch(() => {});
  clearInterval(timer);
  timer = setInterval(() => load({ background: true }).catch(() => {}), 30000);
}

export function stopDashboard() {
  clearInterval(timer);
  timer = null;
}

/** A live event changed the figures: reload if the dashboard is on screen. */
export function dashboardChanged() {
  if (timer !== null) load({ background: true }).catch(() => {});
}

function card(label, value, note = "") {
  const none = value === null || value === undefined || value === NONE;
  return el("div", { attrs: { "data-metric": label } },
    el("div", { className: "c-label", text: label }),
    el("div", { className: none ? "c-value none" : (String(value).length > 7 ? "c-value long" : "c-value"),
      text: none ? NONE : value }),
    note ? el("div", { className: "c-note", text: note }) : null);
}

async function load({ background = false } = {}) {
  const params = { from: $("period-from").value, to: $("period-to").value };
  const data = await get(`/console/api/dashboard${query(params)}`, { background });
  const t = data.today, d = data.drafts, e = data.evaluation;
  clear($("cards-today")).append(
    card("今日来电", t.calls),
    card("15秒内接通率", t.answered_within_15s_rate === null ? null : formatPercent(t.answered_within_15s_rate),
      `转人工 ${t.queued} 个中 · 目标 ≥ ${formatPercent(t.answered_within_15s_target)}（GB/T 33358）`),
    card("排队放弃", t.abandoned, "等待接线员时挂机"),
    card("平均等待", t.mean_wait_seconds === null ? null : `${t.mean_wait_seconds} 秒`, `人工接听 ${t.answered}`),
    card("短信接收", t.sms_in),
    card("短信发送", t.sms_out, `已发出 ${t.sms_sent} · 已送达 ${t.sms_delivered}`),
    card("短信送达率", t.sms_delivery_rate === null ? null : formatPercent(t.sms_delivery_rate),
      `今日发出：已送达 ${t.sms_delivered} · 未送达 ${t.sms_undelivered}`),
    card("今日受理", t.intake),
    card("待处理草稿", d.waiting),
    card("最早草稿", d.oldest ? d.oldest.number : "无",
      d.oldest ? `已等待 ${formatDuration(d.oldest.waiting_seconds)}（目标 ${formatDuration(d.target_seconds)}）` : ""),
  );
  const s = data.supervision;
  clear($("cards-supervision")).append(
    card("今日派发", s.sent_today, "核实、核查任务短信"),
    card("今日回复", s.answered_today, `属实 ${s.confirmed_today} · 不属实 ${s.not_confirmed_today}`),
    card("待回复", s.waiting, s.oldest_waiting
      ? `最久 ${s.oldest_waiting.code} 已等待 ${formatDuration(s.oldest_waiting.waiting_seconds)}（时限 ${formatDuration(s.limit_seconds)}）`
      : `超过 ${formatDuration(s.limit_seconds)} 未回复即升级值班长`),
    card("今日升级", s.escalated_today, `升级后仍未回复 ${s.escalated_unanswered}`),
  );
  setText("eval-period", `${data.period.from} 至 ${data.period.to}`);
  clear($("cards-eval")).append(
    card("受理数", e.intake),
    card("立案数", e.registered),
    card("应结案数", e.due, `立案后 ${e.deadline_hours} 小时内应结案`),
    card("结案数", e.closed),
    card("结案率", e.closure_rate === null ? null : formatPercent(e.closure_rate), "结案数 / 应结案数"),
    card("按期结案率", e.on_time_closure_rate === null ? null : formatPercent(e.on_time_closure_rate),
      "按期结案数 / 应结案数"),
    card("重复举报率", e.repeat_rate === null ? null : formatPercent(e.repeat_rate), "合并及重复不予立案 / 受理数"),
  );
  rateChart($("chart-rates"), [
    { label: "结案率", value: e.closure_rate, cls: "rate" },
    { label: "按期结案率", value: e.on_time_closure_rate, cls: "rate" },
    { label: "重复举报率", value: e.repeat_rate, cls: "repeat" },
    { label: "短信送达率", value: t.sms_delivery_rate, cls: "rate" },
  ]);
  barChart($("chart-category"), data.by_category.map((c) => ({ label: `${c.code} ${c.name}`, value: c.count })));
  barChart($("chart-grid"), data.by_grid.map((g) => ({ label: g.name || g.code, value: g.count })));
  setText("dash-updated", `更新于 ${formatTime(data.generated_at)}`);
}

const WIDTH = 520, ROW = 26, LABEL = 190, PAD = 8;

/** Horizontal bars, longest = full width; counts written at the end of each bar. */
function barChart(host, rows) {
  clear(host);
  if (!rows.length) {
    host.append(el("p", { className: "empty", text: NONE }));
    return;
  }
  const max = Math.max(...rows.map((r) => r.value), 1);
  const height = rows.length * ROW + PAD;
  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": host.parentElement.querySelector("figcaption").textContent });
  rows.forEach((row, i) => {
    const y = i * ROW + PAD / 2, span = WIDTH - LABEL - 50;
    const w = Math.max(2, (row.value / max) * span);
    chart.append(
      svg("text", { x: LABEL - 6, y: y + 16, "text-anchor": "end" }, clip(row.label, 14)),
      svg("rect", { class: "track", x: LABEL, y: y + 3, width: span, height: ROW - 8, rx: 2 }),
      svg("rect", { class: "bar", x: LABEL, y: y + 3, width: w.toFixed(1), height: ROW - 8, rx: 2 },
        svg("title", {}, `${row.label}：${row.value}`)),
      svg("text", { class: "val", x: LABEL + w + 6, y: y + 16 }, String(row.value)),
    );
  });
  host.append(chart);
}

/** Rates as bars on a 0-100 % track; a rate without data says so instead of drawing 0. */
function rateChart(host, rows) {
  clear(host);
  const height = rows.length * ROW + PAD;
  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "评价指标" });
  rows.forEach((row, i) => {
    const y = i * ROW + PAD / 2, span = WIDTH - LABEL - 90;
    chart.append(
      svg("text", { x: LABEL - 6, y: y + 16, "text-anchor": "end" }, row.label),
      svg("rect", { class: "track", x: LABEL, y: y + 3, width: span, height: ROW - 8, rx: 2 }),
    );
    if (row.value !== null && row.value !== undefined) {
      chart.append(svg("rect", { class: `bar ${row.cls}`, x: LABEL, y: y + 3,
        width: Math.max(1, row.value * span).toFixed(1), height: ROW - 8, rx: 2 }));
    }
    chart.append(svg("text", { class: "val", x: LABEL + span + 6, y: y + 16 }, formatPercent(row.value)));
  });
  host.append(chart);
}

function clip(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}
