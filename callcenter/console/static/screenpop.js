// Screen pop: when the IVR transfers a call, the caller's open cases and history, and a new
// draft form already holding the caller's number (as a handle when this role sees it masked).

import { ApiError, get, post, query } from "./api.js";
import { $, clear, el, formatTime, setText } from "./dom.js";
import { Combobox } from "./combobox.js";

let pop = null; // server handle on the caller's number
let chosen = { category: null, grid: null };
let hooks = { flash: () => {}, open: () => {} };

export function initScreenPop({ flash, open }) {
  hooks = { flash, open };
  new Combobox({
    input: $("p-category-q"), list: $("p-category-list"),
    search: async (q) => (await get(`/console/api/catalogue${query({ q })}`)).items,
    option: (c) => ({ code: c.code, label: c.name, detail: `${c.kind_label}·${c.major_name}` }),
    onPick: (c) => { chosen.category = c; setText("p-category-chosen", `${c.code} ${c.name}`); },
    next: $("p-grid-q"),
  });
  new Combobox({
    input: $("p-grid-q"), list: $("p-grid-list"),
    search: async (q) => (await get(`/console/api/grids${query({ q })}`)).items,
    option: (g) => ({ code: g.code, label: g.name, detail: `${g.street} ${g.community}` }),
    onPick: (g) => { chosen.grid = g; setText("p-grid-chosen", `${g.code} ${g.name}`); },
    next: $("p-address"),
  });
  $("pop-lookup").addEventListener("submit", (event) => {
    event.preventDefault();
    const phone = $("pop-phone").value.trim();
    if (phone) lookup({ phone }).catch(report);
  });
  $("p-phone").addEventListener("input", () => { pop = null; });
  $("pop-form").addEventListener("submit", (event) => {
    event.preventDefault();
    create().catch(report);
  });
}

function report(error) {
  if (error instanceof ApiError && error.status !== 401) {
    setText("p-error", error.message);
    hooks.flash(error.message, true);
  }
}

/** params: {phone} typed or from the URL, or {pop, case} from a live screen_pop event
 *  (case: the draft the caller filed in the IVR before being transferred). */
export async function lookup(params) {
  setText("p-error", "");
  const data = await get(`/console/screen-pop${query(params)}`);
  pop = data.pop;
  $("pop-caller").hidden = false;
  setText("pop-caller-number", data.phone_display || "未显示号码");
  $("p-phone").value = data.phone || data.phone_display || "";
  $("p-phone").readOnly = Boolean(data.pop) && !data.phone;
  $("pop-draft-box").hidden = !data.case;
  fill("pop-draft", null, data.case ? [data.case] : []);
  fill("pop-open", "pop-open-empty", data.open_cases);
  fill("pop-history", "pop-history-empty", data.history);
  $("p-description").focus();
}

function fill(listId, emptyId, cases) {
  const list = clear($(listId));
  for (const item of cases) {
    list.append(el("li", {},
      el("p", {}, el("button", { type: "button", className: "number", text: item.number,
        on: { click: () => hooks.open(item.number) } }),
      el("span", { className: "tag", text: item.status_label }), ` ${formatTime(item.created_at)}`),
      el("p", { text: `${item.category ? item.category.name : "未分类"} · ${item.address || ""}` }),
      el("p", { text: item.description })));
  }
  if (emptyId) $(emptyId).hidden = cases.length > 0;
}

async function create() {
  setText("p-error", "");
  const body = {
    description: $("p-description").value,
    category: chosen.category ? chosen.category.code : null,
    grid: chosen.grid ? chosen.grid.code : null,
    address: $("p-address").value.trim() || null,
  };
  if (pop && $("p-phone").readOnly) body.pop = pop;
  else if (pop && $("p-phone").value.trim()) body.pop = pop;
  else body.reporter_phone = $("p-phone").value.trim() || null;
  if (!body.description.trim()) {
    setText("p-error", "请填写问题描述");
    $("p-description").focus();
    return;
  }
  const data = await post("/console/api/cases", body);
  hooks.flash(`已创建草稿，受理编号 ${data.number}`);
  for (const id of ["p-description", "p-address"]) $(id).value = "";
  chosen = { category: null, grid: null };
  setText("p-category-chosen", "未选择");
  setText("p-grid-chosen", "未选择");
  hooks.open(data.number);
}
