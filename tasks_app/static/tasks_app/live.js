/* Live admin pages without a reload (tasks_app.admin_views.live_view).
 *
 * Every few seconds, while the tab is visible and the operator has not paused,
 * the page asks one small JSON endpoint for the records it shows
 * (elements with data-claw-record and data-claw-field) and the timeline events
 * newer than the last one it has (a table with data-claw-timeline), and updates
 * those cells in place. Nothing else on the page is touched, so filters,
 * selected rows, open forms and the scroll position stay as they were. Pages with
 * server-rendered blocks (the dashboard: elements with data-claw-swap) fetch the
 * page itself and swap those blocks only. A hidden tab fetches nothing; it
 * catches up as soon as it is shown again. The pause switch is remembered per
 * browser (localStorage).
 */
(function () {
  "use strict";
  const root = document.querySelector("[data-claw-live]");
  if (!root) return;
  const endpoint = root.dataset.clawLive;
  const interval = 1000 * Number(root.dataset.clawLiveSeconds || 3);
  const PAUSED_KEY = "claw-live-paused";
  let timer = null;
  let busy = false;

  function paused() {
    return window.localStorage.getItem(PAUSED_KEY) === "1";
  }

  function addSwitch() {
    const bar = document.createElement("p");
    bar.className = "claw-live-switch";
    const button = document.createElement("button");
    button.type = "button";
    button.id = "claw-live-toggle";
    const status = document.createElement("span");
    status.id = "claw-live-status";
    status.className = "help";
    status.style.marginLeft = "0.5em";
    function label() {
      button.textContent = paused() ? "Resume live updates" : "Pause live updates";
      button.setAttribute("aria-pressed", paused() ? "true" : "false");
    }
    button.addEventListener("click", function () {
      window.localStorage.setItem(PAUSED_KEY, paused() ? "0" : "1");
      label();
      schedule(0);
    });
    label();
    bar.append(button, status);
    root.prepend(bar);
    return status;
  }
  const statusLine = addSwitch();

  function recordIds() {
    const ids = new Set();
    document.querySelectorAll("[data-claw-record]").forEach(function (el) {
      ids.add(el.dataset.clawRecord);
    });
    return Array.from(ids).slice(0, 200);
  }

  function applyTasks(tasks) {
    document.querySelectorAll("[data-claw-record]").forEach(function (el) {
      const task = tasks[el.dataset.clawRecord];
      const field = el.dataset.clawField;
      if (!task || !(field in task)) return;
      // The server renders these fragments with Django's escaping (format_html).
      if (el.innerHTML !== task[field]) el.innerHTML = task[field];
    });
  }

  function applyEvents(table, events) {
    const body = table.tBodies[0] || table;
    events.forEach(function (event) {
      const row = document.createElement("tr");
      row.className = "claw-live-new";
      [event.at, event.kind, String(event.attempt), event.worker].forEach(
        function (text) {
          const cell = document.createElement("td");
          cell.textContent = text;
          row.append(cell);
        }
      );
      const data = document.createElement("td");
      const code = document.createElement("code");
      code.textContent = event.data;
      data.append(code);
      row.append(data);
      body.append(row);
      table.dataset.after = String(event.id);
    });
  }

  async function pollRecords() {
    const params = new URLSearchParams();
    const ids = recordIds();
    const timeline = document.querySelector("[data-claw-timeline]");
    if (!ids.length && !timeline) return;
    params.set("ids", ids.join(","));
    if (timeline) {
      params.set("record", timeline.dataset.clawTimeline);
      params.set("after", timeline.dataset.after || "0");
    }
    const response = await fetch(endpoint + "?" + params.toString(), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const body = await response.json();
    applyTasks(body.tasks || {});
    if (timeline && body.events) applyEvents(timeline, body.events);
    return body.now;
  }

  async function pollBlocks() {
    const blocks = document.querySelectorAll("[data-claw-swap]");
    if (!blocks.length) return;
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    blocks.forEach(function (block) {
      const next = fresh.querySelector(
        '[data-claw-swap="' + block.dataset.clawSwap + '"]'
      );
      if (next && next.innerHTML !== block.innerHTML) block.innerHTML = next.innerHTML;
    });
  }

  async function tick() {
    timer = null;
    if (document.hidden || paused() || busy) {
      statusLine.textContent = paused() ? "Paused." : "";
      return; // visibilitychange or the switch starts it again
    }
    busy = true;
    try {
      const now = endpoint ? await pollRecords() : null;
      await pollBlocks();
      statusLine.textContent = "Updated " + (now || new Date().toLocaleTimeString());
    } catch (error) {
      statusLine.textContent = "Live update failed (" + error.message + "); retrying.";
    } finally {
      busy = false;
    }
    schedule(interval);
  }

  function schedule(delay) {
    if (timer !== null) window.clearTimeout(timer);
    timer = window.setTimeout(tick, delay);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) schedule(0);
  });
  schedule(interval);
})();
