// Console start-up: who is signed in, the views (#/queue, #/case/N, #/pop, #/dashboard),
// the live event stream and the keyboard shortcuts that work everywhere.

import { get, request, setCsrf, toSignIn } from "./api.js";
import { $, setText, setTimeZone } from "./dom.js";
import { caseChanged, closeCase, currentNumber, initDraft, openCase } from "./draft.js";
import { focusQueue, initQueue, markSelected, nextDraft, refresh, refreshSoon } from "./queue.js";
import { dashboardChanged, initDashboard, startDashboard, stopDashboard } from "./dashboard.js";
import { initNotices, loadCaseNotices, refreshNotices } from "./notices.js";
import { initScreenPop, lookup } from "./screenpop.js";

let flashTimer = null;
function flash(message, isError = false) {
  const box = $("flash");
  box.classList.toggle("error", Boolean(isError));
  box.textContent = message;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { box.textContent = ""; }, 8000);
}

function showView(name) {
  for (const view of ["queue", "pop", "dashboard"]) {
    $(`view-${view}`).hidden = view !== name;
    const link = $(`nav-${view}`);
    if (view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (name === "dashboard") startDashboard();
  else stopDashboard();
}

async function route() {
  const hash = location.hash || "#/queue";
  const caseMatch = hash.match(/^#\/case\/(\d{6,12})$/);
  if (caseMatch) {
    showView("queue");
    markSelected(caseMatch[1]);
    if (currentNumber() !== caseMatch[1]) await openCase(caseMatch[1]).catch((e) => flash(e.message, true));
  } else if (hash.startsWith("#/pop")) {
    showView("pop");
    const params = new URLSearchParams(hash.split("?")[1] || "");
    const pop = params.get("pop"), caseNumber = params.get("case");
    if (pop || caseNumber) await lookup({ pop, case: caseNumber }).catch((e) => flash(e.message, true));
  } else if (hash === "#/dashboard") {
    showView("dashboard");
  } else {
    showView("queue");
  }
}

function openNumber(number) {
  if (location.hash === `#/case/${number}`) openCase(number).catch((e) => flash(e.message, true));
  else location.hash = `#/case/${number}`;
}

/** After a submit: open the oldest waiting draft, or stay on the submitted case if none. */
async function openNextDraft(done) {
  const next = await nextDraft(done);
  if (next) {
    openNumber(next);
    flash(`受理编号 ${done} 已提交立案；已打开下一条草稿 ${next}`);
  }
}

let streamOpened = false; // the first open follows the page's own loading

function connect() {
  const status = $("live-status");
  const source = new EventSource("/console/events");
  source.addEventListener("open", () => {
    status.textContent = "实时连接";
    status.className = "live on";
    refresh().catch(() => {});
    if (streamOpened) noticesChanged(); // a reconnect: notices may have changed meanwhile
    streamOpened = true;
  });
  source.addEventListener("error", () => {
    status.textContent = "连接中断，正在重连…";
    status.className = "live off";
    if (source.readyState === EventSource.CLOSED) {
      // Refused outright (401 after an expiry): ask the API, which sends us to sign-in.
      get("/console/api/me", { background: true }).then(() => setTimeout(connect, 3000)).catch(() => {});
    }
  });
  source.addEventListener("draft_created", (event) => {
    const data = JSON.parse(event.data);
    refreshSoon();
    flash(`新草稿 ${data.number}`);
  });
  source.addEventListener("case_updated", (event) => {
    const data = JSON.parse(event.data);
    refreshSoon();
    caseChanged(data.number).catch(() => {});
  });
  source.addEventListener("resync", () => {
    refreshSoon();
    noticesChanged();
  });
  source.addEventListener("screen_pop", (event) => {
    const data = JSON.parse(event.data);
    // The IVR names the draft the caller filed (case_number); a withheld number has no pop handle.
    flash(`来电：${data.phone_display || "未显示号码"}${data.case_number ? `，已建草稿 ${data.case_number}` : ""}`);
    const params = new URLSearchParams();
    if (data.pop) params.set("pop", data.pop);
    if (data.case_number) params.set("case", data.case_number);
    location.hash = `#/pop?${params}`;
  });
  source.addEventListener("notice", () => noticesChanged());
  source.addEventListener("session_expired", () => {
    source.close();
    toSignIn("expired");
  });
}

/** Supervisor tasks changed: the sidebar, the open case's tasks and the dashboard reload. */
let noticeTimer = null;
function noticesChanged() {
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    refreshNotices().catch(() => {});
    const number = currentNumber();
    if (number) {
      loadCaseNotices(number).catch(() => {});
      caseChanged(number).catch(() => {}); // the task also wrote to the case log
    }
    dashboardChanged();
  }, 100);
}

async function main() {
  const me = await get("/console/api/me");
  setCsrf(me.csrf_token);
  setTimeZone(me.timezone);
  setText("user-name", me.display_name);
  setText("user-role", me.role_label);
  const tree = await get("/console/api/catalogue");
  initQueue({ open: openNumber });
  initDraft({ flash, changed: () => refreshSoon(), next: openNextDraft, reasons: me.reject_reasons, tree });
  initScreenPop({ flash, open: openNumber });
  initDashboard();
  initNotices({ open: openNumber });
  $("logout").addEventListener("click", async () => {
    try {
      await request("POST", "/console/logout", {});
    } catch (error) { /* a redirect is still a sign-out */ }
    location.assign("/console/login?m=signed_out");
  });
  document.addEventListener("keydown", (event) => {
    if (event.altKey && (event.key === "q" || event.key === "Q")) {
      event.preventDefault();
      if (!location.hash.startsWith("#/case") && location.hash !== "#/queue" && location.hash !== "") {
        location.hash = "#/queue";
      }
      focusQueue();
    }
  });
  window.addEventListener("hashchange", () => route());
  await refresh();
  await refreshNotices();
  // /console/screen-pop?phone=… opened by a softphone: show that caller.
  if (location.pathname === "/console/screen-pop") {
    const params = new URLSearchParams(location.search);
    showView("pop");
    if (params.get("phone")) await lookup({ phone: params.get("phone") }).catch((e) => flash(e.message, true));
    if (params.get("pop")) await lookup({ pop: params.get("pop") }).catch((e) => flash(e.message, true));
  } else {
    await route();
  }
  closeCaseIfNone();
  connect();
  // Belt and braces: a full reload now and then, in case a live event was lost.
  setInterval(() => {
    refresh().catch(() => {});
    refreshNotices().catch(() => {});
  }, 60000);
  document.body.dataset.ready = "1";
}

function closeCaseIfNone() {
  if (!currentNumber()) closeCase();
}

main().catch((error) => {
  flash(error.message || "加载失败，请刷新页面", true);
});
