// One case on screen: recording, SMS thread, transcription form with category and grid
// search, duplicate candidates with merge, submit or reject, and the case log.
// Saving sends the version the form was loaded at; if a colleague saved first, the server
// answers 409 and this page shows their changes while keeping what was typed here.

import { ApiError, get, patch, post, query } from "./api.js";
import { $, clear, el, formatTime, setText } from "./dom.js";
import { Combobox } from "./combobox.js";
import { loadCaseNotices } from "./notices.js";

const FIELD_LABELS = {
  description: "问题描述", category: "类别", grid: "网格", address: "地址", category_code: "类别",
  grid_code: "网格", kind: "部件/事件", category_edition: "分类版本", reporter_phone: "电话号码",
  channel: "渠道", into: "合并至", from: "并入", reason: "原因", platform_number: "案卷号", rating: "评价",
  outcome: "结果", interface: "坐席话机", phone: "电话号码",
};
const HIDDEN_CHANGES = new Set(["kind", "category_edition"]);
// Supervisor-task entries (task_sent, task_answered, task_escalated) have fields of their own.
const TASK_FIELDS = { task: "任务", kind: "类型", grid: "网格", supervisor: "监督员", answer_zh: "回复", late: "超时后回复", to: "升级至" };
const TASK_VALUES = { kind: { verify: "核实", check: "核查" }, to: { shift_leader: "值班长" }, late: { true: "是" } };

let baseline = null; // the case as last loaded from the server
let chosen = { category: null, grid: null }; // {code, name} picked in the form
let hooks = { flash: () => {}, changed: () => {}, next: async () => {} };
let dupTimer = null;

export function currentNumber() {
  return baseline ? baseline.number : null;
}

export function initDraft({ flash, changed, next, reasons, tree }) {
  hooks = { flash, changed, next };
  new Combobox({
    input: $("f-category-q"), list: $("f-category-list"),
    search: async (q) => (await get(`/console/api/catalogue${query({ q })}`)).items,
    option: (c) => ({ code: c.code, label: c.name, detail: `${c.kind_label}·${c.major_name} ${c.initials || ""}` }),
    onPick: (c) => pickCategory(c), next: $("f-grid-q"),
  });
  new Combobox({
    input: $("f-grid-q"), list: $("f-grid-list"),
    search: async (q) => (await get(`/console/api/grids${query({ q })}`)).items,
    option: (g) => ({ code: g.code, label: g.name, detail: `${g.street} ${g.community}` }),
    onPick: (g) => pickGrid(g), next: $("f-address"),
  });
  renderTree(tree);
  const select = $("reject-reason");
  for (const reason of reasons) select.append(el("option", { value: reason.value, text: reason.label }));

  $("d-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(save);
  });
  $("btn-submit").addEventListener("click", () => guarded(submit));
  $("btn-call-reporter").addEventListener("click", () => callReporter());
  $("reject-form").addEventListener("submit", (event) => {
    event.preventDefault();
    // Like merge: the first press only asks; the second, within 8 s, rejects.
    const button = $("reject-button");
    if (button.dataset.armed !== "1") {
      const reason = $("reject-reason");
      button.dataset.armed = "1";
      button.textContent = `确认不予立案（${reason.options[reason.selectedIndex].text}）`;
      clearTimeout(button.disarm);
      button.disarm = setTimeout(() => disarmReject(), 8000);
      return;
    }
    disarmReject();
    guarded(reject);
  });
  $("reject-reason").addEventListener("change", disarmReject);
  $("merge-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(() => merge($("merge-into").value.trim()));
  });
  document.addEventListener("keydown", (event) => {
    if (!baseline || $("draft-body").hidden || $("view-queue").hidden) return;
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      event.preventDefault();
      guarded(submit);
    } else if ((event.ctrlKey || event.metaKey) && (event.key === "s" || event.key === "S")) {
      event.preventDefault();
      guarded(save);
    } else if (event.altKey && (event.key === "c" || event.key === "C")) {
      event.preventDefault();
      $("f-category-q").focus();
    } else if (event.altKey && (event.key === "g" || event.key === "G")) {
      event.preventDefault();
      $("f-grid-q").focus();
    }
  });
}

function disarmReject() {
  const button = $("reject-button");
  clearTimeout(button.disarm);
  button.dataset.armed = "";
  button.textContent = "不予立案";
}

function renderTree(tree) {
  const root = clear($("cat-tree"));
  for (const kind of tree.kinds) {
    const kindBox = el("details", {}, el("summary", { text: `${kind.label}（${kind.kind === "component" ? "C" : "E"}）` }));
    for (const major of kind.majors) {
      const list = el("ul");
      for (const minor of major.minors) {
        list.append(el("li", {}, el("button", {
          type: "button", text: `${minor.code} ${minor.name} ${minor.initials}`,
          on: { click: () => pickCategory({ code: minor.code, name: minor.name }) },
        })));
      }
      kindBox.append(el("details", {}, el("summary", { text: `${major.code} ${major.name}` }), list));
    }
    root.append(kindBox);
  }
}

function pickCategory(category) {
  chosen.category = category ? { code: category.code, name: category.name } : null;
  showChosen();
  refreshDuplicatesSoon();
}

function pickGrid(grid) {
  chosen.grid = grid ? { code: grid.code, name: grid.name, street: grid.street, community: grid.community } : null;
  showChosen();
  refreshDuplicatesSoon();
}

function showChosen() {
  const c = chosen.category, g = chosen.grid;
  setText("f-category-chosen", c ? `${c.code} ${c.name}` : "未选择");
  setText("f-grid-chosen", g ? `${g.code} ${g.name}${g.street ? `（${g.street} ${g.community}）` : ""}` : "未选择");
}

async function guarded(action) {
  setText("form-error", "");
  try {
    await action();
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) {
      setText("form-error", error.message);
      hooks.flash(error.message, true);
    } else if (!(error instanceof ApiError)) {
      setText("form-error", "操作失败，请重试");
      throw error;
    }
  }
}

export async function openCase(number, { focus = true } = {}) {
  const data = await get(`/console/api/cases/${encodeURIComponent(number)}`);
  $("conflict").hidden = true;
  show(data, { keepForm: false });
  if (focus) (data.editable ? $("f-description") : $("d-number")).focus();
}

export function closeCase() {
  baseline = null;
  $("draft-body").hidden = true;
  $("draft-empty").hidden = false;
}

/** A change announced by the live stream: reload unless the form holds unsaved typing. */
export async function caseChanged(number) {
  if (!baseline || baseline.number !== number) return;
  if (isDirty()) return; // the version check will tell on save
  const data = await get(`/console/api/cases/${encodeURIComponent(number)}`, { background: true });
  show(data, { keepForm: false });
}

function formValues() {
  return {
    description: $("f-description").value,
    category: chosen.category ? chosen.category.code : null,
    grid: chosen.grid ? chosen.grid.code : null,
    address: $("f-address").value,
  };
}

function serverValues(data) {
  return {
    description: data.description || "", category: data.category ? data.category.code : null,
    grid: data.grid ? data.grid.code : null, address: data.address || "",
  };
}

function isDirty() {
  if (!baseline || !baseline.editable) return false;
  const form = formValues(), saved = serverValues(baseline);
  return Object.keys(form).some((key) => (form[key] || "") !== (saved[key] || ""));
}

function show(data, { keepForm }) {
  baseline = data;
  $("draft-empty").hidden = true;
  $("draft-body").hidden = false;
  setText("d-number", data.number);
  setText("d-status", data.status_label);
  setText("d-channel", data.channel_label);
  const flags = clear($("d-flags"));
  for (const label of data.flag_labels) flags.append(el("span", { className: "tag flag", text: label }));
  setText("d-phone", data.reporter_phone || "无");
  setText("d-created", formatTime(data.created_at));
  setText("d-master", data.master_number || "—");
  showCallReporter(data);

  $("d-recording-box").hidden = !data.has_recording;
  const audio = $("d-audio");
  if (data.recording_available) {
    if (audio.getAttribute("src") !== data.recording_url) audio.setAttribute("src", data.recording_url);
    audio.hidden = false;
    $("d-rec-missing").hidden = true;
  } else {
    audio.removeAttribute("src");
    audio.hidden = true;
    $("d-rec-missing").hidden = !data.has_recording;
  }

  const thread = clear($("d-sms"));
  for (const message of data.sms_thread) {
    const meta = `${message.direction === "in" ? "来信" : "发出"} · ${message.party || ""} · ${formatTime(message.at)} · ${message.status_label}`;
    thread.append(el("li", { className: message.direction }, el("span", { className: "t-meta", text: meta }),
      message.body));
  }
  $("d-sms-empty").hidden = data.sms_thread.length > 0;

  if (!keepForm) {
    $("f-description").value = data.description || "";
    $("f-address").value = data.address || "";
    chosen = { category: data.category, grid: data.grid };
    showChosen();
  }
  const suggestion = data.suggested_category;
  setText("f-suggested", suggestion && !(chosen.category)
    ? `建议：${suggestion.code} ${suggestion.name}（可信度 ${Math.round((suggestion.confidence || 0) * 100)}%）` : "");

  for (const node of $("d-form").querySelectorAll("input, textarea, button")) node.disabled = !data.editable;
  $("btn-submit").disabled = !data.can_submit;
  const actionable = ["draft", "submitted"].includes(data.status);
  for (const node of $("reject-form").querySelectorAll("input, select, button")) node.disabled = !actionable;
  for (const node of $("merge-form").querySelectorAll("input, button")) node.disabled = !actionable;
  if (!keepForm) disarmReject();
  renderLog(data.log);
  refreshDuplicatesSoon();
  loadCaseNotices(data.number).catch(() => {});
}

let callStatusFor = null; // the case whose 回拨市民 status line is showing

/** 回拨市民: hidden without a number or without AMI; disabled, saying why, when it cannot work for this reader. */
function showCallReporter(data) {
  const state = data.call_reporter || { possible: false, reason: "ami_off" };
  const button = $("btn-call-reporter");
  const hidden = state.reason === "no_phone" || state.reason === "ami_off";
  button.hidden = hidden;
  button.disabled = !state.possible;
  if (callStatusFor !== data.number) {
    callStatusFor = null;
    setText("call-reporter-status", state.possible || hidden ? "" : state.message);
    $("call-reporter-status").classList.remove("error");
  }
}

async function callReporter() {
  if (!baseline) return;
  const number = baseline.number, status = $("call-reporter-status"), button = $("btn-call-reporter");
  button.disabled = true;
  callStatusFor = number;
  status.classList.remove("error");
  status.textContent = "正在发起呼叫…";
  try {
    const data = await post(`/console/api/cases/${encodeURIComponent(number)}/call-reporter`);
    status.textContent = data.message;
    // stays off: the case's live update says when the call is over (call_reporter.possible)
  } catch (error) {
    status.classList.add("error");
    status.textContent = error.message;
    if (baseline && baseline.number === number) button.disabled = !(baseline.call_reporter || {}).possible;
  }
}

const VALUE_LABELS = {
  channel: { sms: "短信", phone: "电话", staff: "坐席录入", open311: "网络上报" },
  reason: { duplicate: "重复反映", out_of_scope: "不属于城管受理范围", invalid: "信息无效" },
  outcome: {
    calling: "正在呼叫坐席话机", staff_no_answer: "坐席未接听", staff_busy: "坐席话机忙", staff_hangup: "坐席挂断",
    staff_congestion: "线路拥塞", staff_failed: "坐席话机呼叫失败", reporter_answered: "市民已接听",
    reporter_no_answer: "市民未接听", reporter_busy: "市民忙线", reporter_congestion: "线路拥塞",
    reporter_unavailable: "外线不可用", reporter_cancelled: "坐席在市民接听前挂断",
    reporter_invalid_number: "号码无效，未拨出", reporter_failed: "呼叫失败", ami_down: "呼叫系统不可用",
    refused: "呼叫系统拒绝",
  },
};

function describeValue(key, value) {
  if (value === null || value === undefined || value === "") return "（空）";
  if (typeof value === "object") return JSON.stringify(value);
  return (VALUE_LABELS[key] && VALUE_LABELS[key][value]) || String(value);
}

function describeChange(key, change) {
  const label = FIELD_LABELS[key] || key;
  if (change && typeof change === "object" && "from" in change && "to" in change) {
    return `${label}：${describeValue(key, change.from)} → ${describeValue(key, change.to)}`;
  }
  return `${label}：${describeValue(key, change)}`;
}

function taskChanges(changes) {
  return Object.entries(changes || {})
    .filter(([key, value]) => key in TASK_FIELDS && !(key === "late" && !value))
    .map(([key, value]) => {
      const shown = value === null || value === undefined ? (key === "to" ? "未设置值班长电话" : "（空）")
        : ((TASK_VALUES[key] && TASK_VALUES[key][value]) || String(value));
      return `${TASK_FIELDS[key]}：${shown}`;
    });
}

function logLine(entry) {
  const changes = entry.action.startsWith("task_") ? taskChanges(entry.changes)
    : Object.entries(entry.changes || {}).filter(([key]) => !HIDDEN_CHANGES.has(key))
      .map(([key, change]) => describeChange(key, change));
  if (entry.reason) changes.push(`说明：${describeValue("reason", entry.reason)}`);
  return el("li", {},
    el("span", { className: "l-time", text: formatTime(entry.at) }), " ",
    el("span", { className: "l-actor", text: entry.actor_label }), " ",
    el("span", { className: "l-action", text: entry.action_label }),
    entry.to_status_label ? el("span", { className: "tag", text: entry.to_status_label }) : null,
    changes.length ? el("span", { className: "l-change", text: changes.join("\n") }) : null);
}

function renderLog(entries) {
  const list = clear($("d-log"));
  for (const entry of entries) list.append(logLine(entry));
}

function changedFields() {
  const form = formValues(), saved = serverValues(baseline), changes = {};
  for (const key of Object.keys(form)) {
    if ((form[key] || "") !== (saved[key] || "")) changes[key] = form[key] === null ? "" : form[key];
  }
  return changes;
}

/** Save typed changes; returns false when a colleague's change came first (409). */
async function save({ quiet = false } = {}) {
  if (!baseline || !baseline.editable) return true;
  const changes = changedFields();
  if (!Object.keys(changes).length) {
    if (!quiet) hooks.flash("没有需要保存的修改");
    return true;
  }
  try {
    const data = await patch(`/console/api/cases/${baseline.number}`, {
      ...changes, version: baseline.version, seen_log: baseline.log.length,
    });
    $("conflict").hidden = true;
    show(data, { keepForm: false });
    hooks.flash(`受理编号 ${data.number} 已保存`);
    hooks.changed(data.number);
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 409 && error.body.current) {
      conflict(error.body);
      return false;
    }
    throw error;
  }
}

function conflict(body) {
  const mine = formValues();
  const before = serverValues(baseline);
  const current = body.current;
  const theirs = serverValues(current);
  const list = clear($("conflict-list"));
  const labels = { description: "问题描述", category: "类别", grid: "网格", address: "地址" };
  const names = {
    category: current.category ? `${current.category.code} ${current.category.name}` : "（空）",
    grid: current.grid ? `${current.grid.code} ${current.grid.name}` : "（空）",
  };
  for (const key of Object.keys(labels)) {
    if ((before[key] || "") === (theirs[key] || "")) continue;
    const typed = (mine[key] || "") !== (before[key] || "");
    list.append(el("li", {
      text: `${labels[key]}：对方改为“${names[key] || theirs[key] || "（空）"}”${typed ? "；您的填写已保留" : "；已采用对方的修改"}`,
    }));
  }
  for (const entry of body.others || []) list.append(logLine(entry));
  // Fields this person did not touch take the colleague's values; typed ones stay as typed.
  const keepDescription = (mine.description || "") !== (before.description || "");
  const keepAddress = (mine.address || "") !== (before.address || "");
  const keepCategory = (mine.category || "") !== (before.category || "");
  const keepGrid = (mine.grid || "") !== (before.grid || "");
  show(current, { keepForm: true });
  if (!keepDescription) $("f-description").value = current.description || "";
  if (!keepAddress) $("f-address").value = current.address || "";
  if (!keepCategory) chosen.category = current.category;
  if (!keepGrid) chosen.grid = current.grid;
  showChosen();
  $("conflict").hidden = false;
  hooks.flash("该案件已被他人修改", true);
  $("conflict").scrollIntoView({ block: "nearest" });
}

async function submit() {
  if (!baseline || !baseline.can_submit) return;
  if (!(await save({ quiet: true }))) return;
  if (!chosen.category) {
    setText("form-error", "提交前请先选择类别");
    $("f-category-q").focus();
    return;
  }
  try {
    const data = await post(`/console/api/cases/${baseline.number}/submit`, {
      version: baseline.version, seen_log: baseline.log.length,
    });
    show(data, { keepForm: false });
    hooks.flash(`受理编号 ${data.number} 已提交立案`);
    hooks.changed(data.number);
    await hooks.next(data.number); // the next draft in the queue, so the work goes on
  } catch (error) {
    if (error instanceof ApiError && error.status === 409 && error.body.current) {
      conflict(error.body);
      return;
    }
    throw error;
  }
}

async function reject() {
  const data = await post(`/console/api/cases/${baseline.number}/reject`, {
    reason: $("reject-reason").value, note: $("reject-note").value.trim() || null,
  });
  $("reject-note").value = "";
  show(data, { keepForm: false });
  hooks.flash(`受理编号 ${data.number} 已作不予立案处理`);
  hooks.changed(data.number);
}

async function merge(into) {
  if (!into) {
    setText("form-error", "请输入主案件受理编号");
    $("merge-into").focus();
    return;
  }
  const data = await post(`/console/api/cases/${baseline.number}/merge`, { into });
  $("merge-into").value = "";
  show(data, { keepForm: false });
  hooks.flash(`受理编号 ${data.number} 已合并至 ${data.master_number}，已短信告知反映人`);
  hooks.changed(data.number);
}

function refreshDuplicatesSoon() {
  clearTimeout(dupTimer);
  dupTimer = setTimeout(() => refreshDuplicates().catch(() => {}), 150);
}

async function refreshDuplicates() {
  if (!baseline) return;
  const number = baseline.number;
  const params = { category: chosen.category && chosen.category.code, grid: chosen.grid && chosen.grid.code };
  const data = await get(`/console/api/cases/${number}/duplicates${query(params)}`, { background: true });
  if (!baseline || baseline.number !== number) return;
  const list = clear($("dup-list"));
  const actionable = ["draft", "submitted"].includes(baseline.status);
  if (data.needs) setText("dup-hint", "选择类别和网格后显示疑似重复案件");
  else setText("dup-hint", data.items.length ? "" : `近 ${data.window_days} 天内同类别、同网格或相邻网格无其他案件`);
  for (const item of data.items) {
    const button = el("button", { type: "button", text: "合并到此案件", disabled: !actionable });
    button.addEventListener("click", () => {
      if (button.dataset.armed !== "1") {
        button.dataset.armed = "1";
        button.textContent = `确认：将本案合并到 ${item.number}`;
        setTimeout(() => {
          button.dataset.armed = "";
          button.textContent = "合并到此案件";
        }, 8000);
        return;
      }
      guarded(() => merge(item.number));
    });
    list.append(el("li", { attrs: { "data-number": item.number } },
      el("p", {}, el("strong", { className: "number", text: item.number }),
        el("span", { className: "tag", text: item.status_label }),
        el("span", { className: "tag", text: item.channel_label }), ` ${formatTime(item.created_at)}`),
      el("p", { className: "dup-why" }, ...(item.why || []).map((reason) => el("span", { className: "tag", text: reason }))),
      el("p", { text: [item.category && item.category.name, item.grid && item.grid.name, item.address]
        .filter(Boolean).join(" · ") }),
      el("p", { text: item.description }),
      button));
  }
}
