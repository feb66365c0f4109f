// The dashboard's one script: confirmations, row selection and live refresh. Every page works
// without it (forms post directly); with it, an action asks first and views keep themselves fresh.
"use strict";

(function () {
  const dialog = document.getElementById("confirm");
  let pending = null;

  function ask(question, then) {
    if (!dialog || typeof dialog.showModal !== "function") { if (window.confirm(question)) then(); return; }
    dialog.querySelector("#confirm-text").textContent = question;
    pending = then;
    dialog.showModal();
    dialog.querySelector("[data-confirm-go]").focus();
  }

  if (dialog) {
    dialog.querySelector("[data-confirm-back]").addEventListener("click", () => { pending = null; dialog.close(); });
    dialog.querySelector("[data-confirm-go]").addEventListener("click", () => {
      const then = pending; pending = null; dialog.close(); if (then) then();
    });
  }

  // A form that changes something asks first, saying what it will do.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.confirm || form.dataset.confirmed) return;
    event.preventDefault();
    ask(form.dataset.confirm, () => { form.dataset.confirmed = "1"; form.requestSubmit ? form.requestSubmit() : form.submit(); });
  });

  // Bulk actions over the selected rows, with a confirmation naming how many jobs they touch.
  function wireBulk(root) {
    const bulk = root.querySelector("[data-bulk]");
    if (!bulk) return;
    const rows = () => Array.from(bulk.querySelectorAll("input[data-row]"));
    const count = bulk.querySelector("[data-selected-count]");
    const refreshCount = () => {
      const n = rows().filter((r) => r.checked).length;
      if (count) count.textContent = n + " selected";
      bulk.querySelectorAll("[data-bulk-action]").forEach((b) => { b.disabled = n === 0; });
    };
    const all = bulk.querySelector("[data-select-all]");
    if (all) all.addEventListener("change", () => { rows().forEach((r) => { r.checked = all.checked; }); refreshCount(); });
    bulk.addEventListener("change", (e) => { if (e.target.matches("input[data-row]")) refreshCount(); });
    bulk.querySelectorAll("[data-bulk-action]").forEach((button) => {
      button.addEventListener("click", () => {
        const n = rows().filter((r) => r.checked).length;
        if (n === 0) return;
        ask(button.dataset.verb + " " + n + " job" + (n === 1 ? "" : "s") + "?", () => {
          bulk.querySelector("input[name=action]").value = button.dataset.bulkAction;
          bulk.submit();
        });
      });
    });
    refreshCount();
  }
  wireBulk(document);

  // Live refresh: a conditional GET of this page; 304 means nothing changed (about one store
  // point read on the server). Paused while the tab is hidden, a dialog is open, or rows are
  // selected, so a refresh never takes work out from under the operator.
  const live = document.querySelector("[data-live]");
  const main = document.getElementById("main");
  if (!live || !main) return;
  const toggle = live.querySelector("[data-live-toggle]");
  const interval = live.querySelector("[data-live-interval]");
  const state = live.querySelector("[data-live-state]");
  const stored = window.localStorage;
  if (stored.getItem("fleet.live") === "off") toggle.checked = false;
  if (stored.getItem("fleet.every")) interval.value = stored.getItem("fleet.every");
  let timer = null;

  function busy() {
    return document.hidden || (dialog && dialog.open) ||
      Array.from(main.querySelectorAll("input[data-row]")).some((r) => r.checked) ||
      (document.activeElement && main.contains(document.activeElement) && document.activeElement.matches("input, textarea, select"));
  }

  async function refresh() {
    if (!toggle.checked || busy()) return;
    try {
      const answer = await fetch(window.location.href, {
        headers: { "If-None-Match": main.dataset.version || "" }, credentials: "same-origin", cache: "no-store",
      });
      if (answer.status === 304) { state.textContent = "up to date"; return; }
      if (answer.status !== 200) { state.textContent = "could not refresh (" + answer.status + ")"; return; }
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.getElementById("main");
      if (!fresh || busy()) return;
      main.innerHTML = fresh.innerHTML;
      main.dataset.version = fresh.dataset.version || "";
      wireBulk(main);
      state.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      state.textContent = "offline";
    }
  }

  function schedule() {
    if (timer) window.clearInterval(timer);
    timer = toggle.checked ? window.setInterval(refresh, Number(interval.value) * 1000) : null;
    state.textContent = toggle.checked ? "" : "paused";
  }
  toggle.addEventListener("change", () => { stored.setItem("fleet.live", toggle.checked ? "on" : "off"); schedule(); });
  interval.addEventListener("change", () => { stored.setItem("fleet.every", interval.value); schedule(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  schedule();
})();
