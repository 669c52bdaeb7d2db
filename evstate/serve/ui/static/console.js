// evstate console: live updates over Server-Sent Events, and the scope filter.
// Pages work without this file; it only adds what cannot be done without script.
"use strict";

(function () {
  function swapContent(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var fresh = doc.getElementById("content");
    var main = document.getElementById("content");
    if (!fresh || !main) return;
    // Keep what the reader opened or typed: open deploys and focused fields survive.
    var open = Array.prototype.map.call(main.querySelectorAll("details[open] summary"),
      function (s) { return s.textContent; });
    if (main.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
    main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
    main.querySelectorAll("details summary").forEach(function (s) {
      if (open.indexOf(s.textContent) >= 0) s.parentElement.open = true;
    });
  }

  var refreshing = false, again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(location.href, { headers: { "X-Evstate-Live": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html) swapContent(html); })
      .finally(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  function startLive(main) {
    var list = document.getElementById("live-list");
    var state = document.getElementById("live-state");
    var source = new EventSource(main.getAttribute("data-live"));
    source.onopen = function () { if (state) state.textContent = "Connected: new changes appear here."; };
    source.onerror = function () { if (state) state.textContent = "Reconnecting…"; };
    source.addEventListener("change", function (msg) {
      var e = JSON.parse(msg.data);
      if (list) {
        var li = document.createElement("li");
        li.className = "fresh";
        var what = e.key ? e.key + " v" + e.version : "lock";
        li.textContent = e.op + " " + what + " by " + e.actor + " at " + e.at +
          (e.reason ? ": " + e.reason : "");
        list.insertBefore(li, list.firstChild);
        while (list.children.length > 50) list.removeChild(list.lastChild);
      }
      refresh();
    });
  }

  function startFilter(input) {
    var rows = document.querySelectorAll("#scopes tbody tr");
    input.addEventListener("input", function () {
      var q = input.value.toLowerCase();
      rows.forEach(function (row) {
        row.hidden = row.getAttribute("data-path").toLowerCase().indexOf(q) < 0;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var main = document.getElementById("content");
    if (main && main.hasAttribute("data-live") && window.EventSource) startLive(main);
    var filter = document.querySelector("input[data-filter]");
    if (filter) startFilter(filter);
  });
})();
