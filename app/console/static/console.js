// imagegate console: charts, dialogs and calls of the admin API. No inline scripts (the page's
// Content-Security-Policy forbids them); every change is a fetch() of /admin/... with the
// session's CSRF token, so it runs through the admin API's own validation.
(function () {
  "use strict";

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function say(target, text) {
    var box = (target && target.querySelector && target.querySelector('[role="alert"]')) ||
      document.getElementById("flash");
    if (box) box.textContent = text;
  }

  async function callApi(method, url, body) {
    var headers = { "x-csrf-token": csrf() };
    if (body !== undefined) headers["content-type"] = "application/json";
    var resp = await fetch(url, {
      method: method,
      headers: headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    var data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      var msg = data && data.error && data.error.message ? data.error.message : "HTTP " + resp.status;
      throw new Error(msg);
    }
    return data;
  }

  // --- charts (uPlot), drawn from <script type="application/json" id="series">

  var charts = [];

  function drawCharts(root) {
    var src = document.getElementById("series");
    if (!src || !window.uPlot) return;
    var series = JSON.parse(src.textContent);
    charts.forEach(function (c) { c.plot.destroy(); c.observer.disconnect(); });
    charts = [];
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var name = el.dataset.chart;
      if (!series[name]) return;
      el.textContent = "";
      var fg = cssVar("--muted"), grid = cssVar("--chart-grid"), accent = cssVar("--accent");
      var unit = el.dataset.unit || "";
      var opts = {
        width: Math.max(200, el.clientWidth),
        height: 180,
        legend: { show: true, live: true },
        cursor: { drag: { x: false, y: false } },
        // half a day of room on each side, so the first and last bars are whole
        scales: { x: { time: true, range: function (u, min, max) { return [min - 43200, max + 43200]; } } },
        series: [
          { value: "{YYYY}-{MM}-{DD}" },
          {
            label: el.dataset.label,
            stroke: accent,
            fill: accent + "55",
            width: 1,
            paths: uPlot.paths.bars({ size: [0.7, 40] }),
            points: { show: false },
            value: function (u, v) { return v == null ? "—" : (unit === "$" ? "$" + v : v + (unit === "%" ? "%" : "")); },
          },
        ],
        axes: [
          { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
          { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 56 },
        ],
      };
      var plot = new uPlot(opts, [series.t, series[name]], el);
      var observer = new ResizeObserver(function () {
        plot.setSize({ width: Math.max(200, el.clientWidth), height: 180 });
      });
      observer.observe(el);
      el.dataset.points = String(series[name].filter(function (v) { return v; }).length);
      charts.push({ plot: plot, observer: observer });
    });
  }

  // --- dialogs

  function openDialog(button) {
    var dialog = document.getElementById(button.dataset.open);
    if (!dialog) return;
    var d = button.dataset;
    dialog.dataset.keyId = d.keyId || "";
    dialog.querySelectorAll("[data-fill]").forEach(function (el) {
      var what = el.dataset.fill;
      if (what === "key-name") el.textContent = d.keyName ? "· " + d.keyName : "";
      else if (what === "models") el.checked = (d.models || "").split(",").indexOf(el.value) >= 0;
      else if (what === "rpm") el.value = d.rpm || "";
      else if (what === "max-concurrency") el.value = d.maxConcurrency || "";
    });
    dialog.querySelectorAll('[role="alert"]').forEach(function (el) { el.textContent = ""; });
    dialog.showModal();
  }

  function formBody(form) {
    var body = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || el.type === "submit" || el.type === "button") return;
      var type = el.dataset.type || "str", empty = el.dataset.empty || "keep";
      if (type === "list") {
        if (!(el.name in body)) body[el.name] = [];
        if (el.checked) body[el.name].push(el.value);
        return;
      }
      var v = el.value.trim();
      if (v === "") {
        if (empty === "omit") return;
        if (empty === "null") { body[el.name] = null; return; }
      }
      body[el.name] = type === "int" && v !== "" ? Number(v) : v;
    });
    Object.keys(body).forEach(function (k) {
      if (Array.isArray(body[k]) && body[k].length === 0) body[k] = null;
    });
    return body;
  }

  async function submitForm(form) {
    var dialog = form.closest("dialog");
    var url = form.dataset.url.replace("{id}", encodeURIComponent(dialog ? dialog.dataset.keyId : ""));
    var submit = form.querySelector('[type="submit"]');
    if (submit) submit.disabled = true;
    try {
      var data = await callApi(form.dataset.api, url, formBody(form));
      if (dialog) dialog.close();
      if (data && data.key) {
        var shown = document.getElementById("secret-dialog");
        document.getElementById("new-secret").value = data.key;
        shown.showModal();
        document.getElementById("new-secret").select();
      } else {
        location.reload();
      }
    } catch (err) {
      say(form, err.message);
    } finally {
      if (submit) submit.disabled = false;
    }
  }

  async function clickApi(button) {
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    try {
      var body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
      await callApi(button.dataset.api, button.dataset.url, body);
      location.reload();
    } catch (err) {
      say(button.parentElement, err.message);
      button.disabled = false;
    }
  }

  async function copy(button) {
    var input = document.getElementById(button.dataset.copy);
    var note = button.closest("dialog").querySelector("[data-copied]");
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (e) {  // not a secure context: fall back to the selection
      input.select();
      document.execCommand("copy");
    }
    if (note) note.textContent = "Copied to the clipboard.";
  }

  document.addEventListener("click", function (ev) {
    var el = ev.target.closest("button, a");
    if (!el) return;
    if (el.dataset.open) { ev.preventDefault(); openDialog(el); }
    else if (el.dataset.api && el.tagName === "BUTTON") { ev.preventDefault(); clickApi(el); }
    else if (el.dataset.copy) { ev.preventDefault(); copy(el); }
    else if (el.hasAttribute("data-close")) {
      ev.preventDefault();
      el.closest("dialog").close();
      if (el.hasAttribute("data-reload")) location.reload();
    }
  });

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.dataset && form.dataset.api) { ev.preventDefault(); submitForm(form); }
  });

  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
  document.addEventListener("htmx:afterSettle", function () { drawCharts(document); });
})();
