// A keyboard-first search box with a list of choices (WAI-ARIA combobox + listbox):
// type, ↑/↓ to move, Enter to choose (the first result if none is highlighted), Esc to close.

import { clear, el } from "./dom.js";

let serial = 0;

export class Combobox {
  /**
   * input, list: the elements; search(q) → Promise<items>; option(item) → {code, label, detail};
   * onPick(item): called with the chosen item; next: element to focus after choosing.
   */
  constructor({ input, list, search, option, onPick, next = null, delay = 120 }) {
    Object.assign(this, { input, list, search, option, onPick, next, delay });
    this.items = [];
    this.active = -1;
    this.timer = null;
    this.pending = null;
    this.prefix = `cb${++serial}`;
    input.addEventListener("input", () => this.schedule());
    input.addEventListener("keydown", (event) => this.onKey(event));
    input.addEventListener("blur", () => setTimeout(() => this.close(), 150));
    list.addEventListener("mousedown", (event) => event.preventDefault());
  }

  schedule() {
    clearTimeout(this.timer);
    const text = this.input.value.trim();
    if (!text) {
      this.pending = null;
      this.close();
      return;
    }
    this.pending = new Promise((resolve) => {
      this.timer = setTimeout(async () => {
        try {
          const items = await this.search(text);
          if (this.input.value.trim() === text) this.show(items);
        } catch (error) {
          this.show([]);
        }
        resolve();
      }, this.delay);
    });
  }

  show(items) {
    this.items = items;
    this.active = -1;
    clear(this.list);
    if (!items.length) {
      this.list.append(el("li", { className: "none", text: "无匹配结果", attrs: { "aria-disabled": "true" } }));
    }
    items.forEach((item, index) => {
      const { code, label, detail } = this.option(item);
      this.list.append(el("li", {
        attrs: { id: `${this.prefix}-${index}`, role: "option", "aria-selected": "false", "data-code": code },
        on: { click: () => this.choose(index) },
      }, el("span", { className: "o-code", text: code }), el("span", { text: label }),
      detail ? el("span", { className: "o-detail", text: detail }) : null));
    });
    this.list.hidden = false;
    this.input.setAttribute("aria-expanded", "true");
  }

  close() {
    this.list.hidden = true;
    this.input.setAttribute("aria-expanded", "false");
    this.input.removeAttribute("aria-activedescendant");
    this.active = -1;
  }

  highlight(index) {
    const options = [...this.list.querySelectorAll("[role=option]")];
    if (!options.length) return;
    this.active = (index + options.length) % options.length;
    options.forEach((node, i) => node.setAttribute("aria-selected", String(i === this.active)));
    const current = options[this.active];
    this.input.setAttribute("aria-activedescendant", current.id);
    current.scrollIntoView({ block: "nearest" });
  }

  async onKey(event) {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      if (this.pending) await this.pending;
      if (this.list.hidden && this.items.length) this.show(this.items);
      this.highlight(this.active + (event.key === "ArrowDown" ? 1 : -1));
    } else if (event.key === "Enter") {
      if (!this.input.value.trim()) return;
      event.preventDefault();
      if (this.pending) await this.pending;
      if (this.items.length) this.choose(this.active >= 0 ? this.active : 0);
    } else if (event.key === "Escape") {
      if (!this.list.hidden) {
        event.preventDefault();
        this.close();
      }
    }
  }

  choose(index) {
    const item = this.items[index];
    if (!item) return;
    this.close();
    this.input.value = "";
    this.items = [];
    this.onPick(item);
    if (this.next) this.next.focus();
  }
}
