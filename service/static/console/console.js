/* The review console's own script (service/console, docs/console.md): the live list's polling, and the
   bag page's picture modes, zoom, verdict buttons, box drawing and keyboard shortcuts. No inline
   script, no eval: the pages' Content-Security-Policy allows this file only. */
"use strict";

(function () {
  function csrfOf(form) {
    var field = form.querySelector("input[name=csrf_token]");
    return field ? field.value : "";
  }

  function say(text) {
    var status = document.getElementById("action-status") || document.getElementById("live-status");
    if (status) status.textContent = text;
  }

  async function post(form, submitter) {
    var response = await fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form, submitter)),
      headers: { "Accept": "application/json", "X-CSRF-Token": csrfOf(form) },
      credentials: "same-origin",
    });
    if (response.status === 401) { window.location.href = "/console/login"; }
    var body = await response.json().catch(function () { return {}; });
    if (!response.ok) throw new Error(body.detail || ("HTTP " + response.status));
    return body;
  }

  /* -- the live list ---------------------------------------------------------------------------- */
  function startLiveList(table) {
    var rows = document.getElementById("bag-rows");
    var cursor = table.dataset.cursor;
    var base = table.dataset.rowsUrl;
    async function poll() {
      try {
        var url = base + (base.indexOf("?") < 0 ? "?" : "&") + "since=" + encodeURIComponent(cursor);
        var response = await fetch(url, { headers: { "Accept": "text/html, application/json" }, credentials: "same-origin" });
        if (response.status === 401) { window.location.href = "/console/login"; return; }
        if (response.ok) {
          var html = (await response.text()).trim();
          cursor = response.headers.get("X-Console-Cursor") || cursor;
          if (html) {
            var holder = document.createElement("tbody");
            holder.innerHTML = html;  /* rendered by the server's templates, escaped there */
            var fresh = Array.prototype.slice.call(holder.children);
            fresh.reverse().forEach(function (row) { row.classList.add("is-new"); rows.insertBefore(row, rows.firstChild); });
            var none = document.getElementById("no-bags");
            if (none) none.remove();
            say(fresh.length + " new bag(s) at " + new Date().toLocaleTimeString());
          }
        } else {
          var body = await response.json().catch(function () { return {}; });
          say("The list cannot be updated: " + (body.detail || response.status));
        }
      } catch (err) {
        say("The list cannot be updated: " + err.message);
      }
      window.setTimeout(poll, 1000);
    }
    window.setTimeout(poll, 1000);
  }

  /* -- the bag page: modes and zoom ---------------------------------------------------------------- */
  var zoom = null;  /* null: fit the width */

  function applyZoom() {
    document.querySelectorAll(".stage").forEach(function (stage) {
      var w = Number(stage.dataset.width), h = Number(stage.dataset.height);
      var room = stage.parentElement.clientWidth - 4;
      var scale = zoom === null ? Math.min(4, Math.max(room / w, 0.05)) : zoom;
      stage.style.width = Math.round(w * scale) + "px";
      stage.style.height = Math.round(h * scale) + "px";
    });
    var level = document.getElementById("zoom-level");
    if (level) level.textContent = zoom === null ? "fit" : Math.round(zoom * 100) + " %";
  }

  function currentScale() {
    var stage = document.querySelector(".stage");
    return stage ? stage.getBoundingClientRect().width / Number(stage.dataset.width) : 1;
  }

  function setZoom(how) {
    if (how === "fit") zoom = null;
    else zoom = Math.min(16, Math.max(0.1, currentScale() * (how === "in" ? 1.5 : 1 / 1.5)));
    applyZoom();
  }

  function setMode(mode) {
    var radio = document.getElementById("mode-" + mode);
    if (radio) radio.checked = true;
    var names = { pseudo: "pseudo-colour", high: "high energy", low: "low energy" };
    document.querySelectorAll("img.picture").forEach(function (img) {
      img.src = img.dataset.base + "?mode=" + mode;
      img.alt = img.alt.replace(/in (pseudo-colour|high energy|low energy)/, "in " + names[mode]);
    });
  }

  /* -- the bag page: verdicts ---------------------------------------------------------------------- */
  var selected = -1;

  function detectionRows() { return Array.prototype.slice.call(document.querySelectorAll("tr.det-row")); }

  function select(index) {
    var rows = detectionRows();
    if (!rows.length) return;
    selected = (index + rows.length) % rows.length;
    rows.forEach(function (row, i) {
      row.classList.toggle("selected", i === selected);
      var box = document.getElementById("box-" + row.dataset.view + "-" + row.dataset.det);
      if (box) box.classList.toggle("selected", i === selected);
    });
    rows[selected].focus();
  }

  async function sendVerdict(form, submitter) {
    try {
      var body = await post(form, submitter);
      var v = body.verdict;
      var row = form.closest("tr");
      row.querySelector(".verdict-state").textContent =
        (v.kind === "confirm" ? "confirmed" : "false alarm") + " (" + v.reviewer + ")";
      var box = document.getElementById("box-" + v.view + "-" + v.detection);
      if (box) { box.classList.remove("v-none", "v-confirm", "v-false_alarm"); box.classList.add("v-" + v.kind); }
      say("Detection " + v.detection + " of view " + v.view + ": " + (v.kind === "confirm" ? "confirmed" : "false alarm"));
    } catch (err) {
      say("Not recorded: " + err.message);
    }
  }

  function verdictByKey(kind) {
    var rows = detectionRows();
    if (selected < 0 || selected >= rows.length) { say("Select a detection first (j / k)"); return; }
    var form = rows[selected].querySelector("form.verdict-form");
    sendVerdict(form, form.querySelector("button[value=" + kind + "]"));
  }

  /* -- the bag page: drawing a missed object ------------------------------------------------------- */
  var drawing = false;

  function setDrawing(on) {
    drawing = on;
    var toggle = document.getElementById("draw-toggle");
    if (toggle) toggle.setAttribute("aria-pressed", on ? "true" : "false");
    document.querySelectorAll(".stage").forEach(function (s) { s.classList.toggle("drawing-mode", on); });
    say(on ? "Drawing: drag a box over the missed object" : "");
  }

  function svgPoint(svg, event) {
    var point = svg.createSVGPoint();
    point.x = event.clientX; point.y = event.clientY;
    var p = point.matrixTransform(svg.getScreenCTM().inverse());
    var vb = svg.viewBox.baseVal;
    return { x: Math.min(Math.max(p.x, 0), vb.width), y: Math.min(Math.max(p.y, 0), vb.height) };
  }

  function startDrawing(svg) {
    var rect = svg.querySelector("rect.drawing");
    var start = null;
    function corners(p) {
      return { x1: Math.min(start.x, p.x), y1: Math.min(start.y, p.y), x2: Math.max(start.x, p.x), y2: Math.max(start.y, p.y) };
    }
    function show(c) {
      rect.setAttribute("x", c.x1); rect.setAttribute("y", c.y1);
      rect.setAttribute("width", c.x2 - c.x1); rect.setAttribute("height", c.y2 - c.y1);
    }
    svg.addEventListener("pointerdown", function (e) {
      if (!drawing) return;
      e.preventDefault();
      start = svgPoint(svg, e);
      show(corners(start));
    });
    svg.addEventListener("pointermove", function (e) { if (start) show(corners(svgPoint(svg, e))); });
    svg.addEventListener("pointerup", function (e) {
      if (!start) return;
      var c = corners(svgPoint(svg, e));
      start = null;
      if (c.x2 - c.x1 < 1 || c.y2 - c.y1 < 1) return;
      var section = svg.closest("section.view");
      var form = section.querySelector("form.missed-form");
      ["x1", "y1", "x2", "y2"].forEach(function (k) { form.elements[k].value = c[k].toFixed(1); });
      setDrawing(false);
      form.elements.class_name.focus();
      say("Box drawn: pick its class and save");
    });
  }

  async function sendAndReload(form, submitter, done) {
    try {
      await post(form, submitter);
      sessionStorage.setItem("console-status", done);
      window.location.reload();
    } catch (err) {
      say("Not recorded: " + err.message);
    }
  }

  /* -- wiring -------------------------------------------------------------------------------------- */
  function onKey(e) {
    var tag = (e.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea" || e.ctrlKey || e.metaKey || e.altKey) return;
    var actions = {
      "j": function () { select(selected + 1); }, "k": function () { select(selected - 1); },
      "c": function () { verdictByKey("confirm"); }, "f": function () { verdictByKey("false_alarm"); },
      "d": function () { setDrawing(!drawing); }, "Escape": function () { setDrawing(false); },
      "1": function () { setMode("pseudo"); }, "2": function () { setMode("high"); }, "3": function () { setMode("low"); },
      "+": function () { setZoom("in"); }, "=": function () { setZoom("in"); }, "-": function () { setZoom("out"); },
      "0": function () { setZoom("fit"); },
    };
    if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
  }

  function startBagPage() {
    applyZoom();
    window.addEventListener("resize", function () { if (zoom === null) applyZoom(); });
    document.querySelectorAll("input[name=mode]").forEach(function (r) {
      r.addEventListener("change", function () { setMode(r.value); });
    });
    document.querySelectorAll("button[data-zoom]").forEach(function (b) {
      b.addEventListener("click", function () { setZoom(b.dataset.zoom); });
    });
    document.getElementById("draw-toggle").addEventListener("click", function () { setDrawing(!drawing); });
    document.querySelectorAll("svg.overlay").forEach(startDrawing);
    document.querySelectorAll("form.verdict-form").forEach(function (form) {
      form.addEventListener("submit", function (e) { e.preventDefault(); sendVerdict(form, e.submitter); });
    });
    document.querySelectorAll("form.missed-form").forEach(function (form) {
      form.addEventListener("submit", function (e) { e.preventDefault(); sendAndReload(form, e.submitter, "Missed object saved"); });
    });
    document.querySelectorAll("form.remove-form").forEach(function (form) {
      form.addEventListener("submit", function (e) { e.preventDefault(); sendAndReload(form, e.submitter, "Missed object removed"); });
    });
    document.querySelectorAll("tr.det-row").forEach(function (row, i) {
      row.addEventListener("click", function () { select(i); });
    });
    document.addEventListener("keydown", onKey);
    var kept = sessionStorage.getItem("console-status");
    if (kept) { sessionStorage.removeItem("console-status"); say(kept); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var table = document.getElementById("bags");
    if (table) startLiveList(table);
    if (document.getElementById("bag-id")) startBagPage();
  });
})();
