// meterwire usage console: progressive enhancement only (every page reads without it). Loaded from 'self'; the
// CSP allows no inline script, so data reaches the chart through data-* attributes.
(function () {
  "use strict";

  // Filter forms apply as soon as a choice changes (their Apply buttons stay for typed values and no-JS).
  // A custom range waits for its dates: picking a date selects "custom", and Apply sends it.
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.addEventListener("change", function (event) {
      var target = event.target;
      if (target.type === "datetime-local") {
        var custom = form.querySelector("input[name=range][value=custom]");
        if (custom) custom.checked = true;
        return;
      }
      if (target.type === "radio" && target.value === "custom") return;
      if (target.tagName === "SELECT" || target.type === "radio") form.requestSubmit();
    });
    // Empty "add a filter" boxes stay out of the URL, so a shared link says only what was chosen.
    window.addEventListener("pageshow", function () {  // back from the next page: the boxes work again
      form.querySelectorAll("input:disabled").forEach(function (input) { input.disabled = false; });
    });
    form.addEventListener("submit", function () {
      form.querySelectorAll("input[type=text], input:not([type])").forEach(function (input) {
        if (!input.value.trim()) input.disabled = true;
      });
    });
  });

  function formatter(unit, currency) {
    return function (value) {
      if (value == null) return "";
      if (unit === "money") return (value / 1e6).toLocaleString(undefined, { maximumFractionDigits: 4 }) + (currency ? " " + currency : "");
      if (unit === "ms") return value.toLocaleString(undefined, { maximumFractionDigits: 1 }) + " ms";
      if (unit === "rate") return (value * 100).toFixed(1) + " %";
      return value.toLocaleString(undefined, { maximumFractionDigits: 2 });
    };
  }

  var chartBox = document.getElementById("trend-chart");
  if (chartBox && window.uPlot) {
    var data = JSON.parse(chartBox.getAttribute("data-chart"));
    var fmt = formatter(data.unit, data.currency);
    var tz = data.tz;
    var avg = data.x.map(function () { return data.avg; });
    var size = function () { return { width: Math.max(280, chartBox.clientWidth), height: chartBox.clientWidth < 600 ? 220 : 300 }; };
    var opts = Object.assign(size(), {
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), tz); },
      series: [
        {},
        { label: data.label, stroke: "#2457c5", width: 2, fill: "rgba(36,87,197,0.12)", value: function (u, v) { return fmt(v); } },
        { label: "average", stroke: "#a86400", width: 1, dash: [6, 4], points: { show: false }, value: function (u, v) { return fmt(v); } }
      ],
      axes: [{}, { size: 80, values: function (u, values) { return values.map(fmt); } }],
      scales: { y: { range: function (u, min, max) { return [Math.min(0, min), max > 0 ? max * 1.1 : 1]; } } }
    });
    var plot = new uPlot(opts, [data.x, data.y, avg], chartBox);
    window.addEventListener("resize", function () { plot.setSize(size()); });
  }

  // Fleet: swap in fresh rows every few seconds.
  var fleetRows = document.getElementById("fleet-rows");
  if (fleetRows) {
    var rowsUrl = fleetRows.getAttribute("data-rows-url");
    var every = Number(fleetRows.getAttribute("data-refresh-seconds")) * 1000;
    var updated = document.querySelector("[data-fleet-updated]");
    var refresh = function () {
      fetch(rowsUrl, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); return null; }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html != null) {
            fleetRows.innerHTML = html;
            if (updated) updated.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
          }
        })
        .catch(function () { if (updated) updated.textContent = "Cannot reach the console; retrying."; })
        .finally(function () { window.setTimeout(refresh, every); });
    };
    window.setTimeout(refresh, every);
  }

  // Export: follow the job until its file is ready.
  var job = document.getElementById("export-job");
  if (job) {
    var statusUrl = job.getAttribute("data-status-url");
    var bar = document.getElementById("export-progress");
    var rows = document.getElementById("export-rows");
    var state = document.getElementById("export-state");
    var poll = function () {
      fetch(statusUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) { return response.json(); })
        .then(function (status) {
          bar.value = status.progress;
          rows.textContent = status.rows.toLocaleString();
          if (status.error) {
            state.textContent = "Failed: " + status.error;
          } else if (status.done) {
            state.textContent = "Ready: ";
            var link = document.createElement("a");
            link.id = "export-file";
            link.href = status.file;
            link.setAttribute("download", "");
            link.textContent = "download";
            state.appendChild(link);
          } else {
            window.setTimeout(poll, 300);
          }
        });
    };
    if (!document.getElementById("export-file")) poll();
  }
})();
