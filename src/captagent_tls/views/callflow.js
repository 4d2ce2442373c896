"use strict";
// The call-flow report's page: the call list (sorted, filtered, a page at a time) and, for
// the call that is opened, its ladder diagram, drawn then and only then.  The data is in the
// JSON script elements above (layout in captagent_tls/views/callflow.py).  The location's
// hash keeps what is shown, so that a view can be linked and reloaded:
//   #filter=TEXT&sort=KEY&dir=asc|desc&page=N&call=CALL-ID&msg=N
(function () {
  const PAGE_SIZE = 100;
  const MAX_ARROWS = 2000; // a ladder draws at most this many messages
  const SVG = "http://www.w3.org/2000/svg";

  const byId = (id) => document.getElementById(id);
  const parse = (id) => JSON.parse(byId(id).textContent);

  const meta = parse("meta");
  const endpoints = parse("endpoints");
  const calls = parse("calls").map((c, index) => ({
    index, callId: c[0], from: c[1], to: c[2], first: c[3], last: c[4], status: c[5],
    reason: c[6], messages: c[7], transport: c[8], tlsVersion: c[9], suite: c[10],
    method: c[11], media: c[12] || [],
  }));
  const callsById = new Map();
  for (const call of calls) {
    call.duration = call.last - call.first;
    call.statusText = call.status ? (call.status + " " + call.reason).trim() : "";
    call.search = [call.callId, call.from, call.to, call.method, call.statusText,
      call.transport, call.tlsVersion, call.suite].join("\n").toLowerCase();
    callsById.set(call.callId, call);
  }

  let messagesByCall = null; // the bulk of the file: parsed when the first ladder is opened
  function messagesOf(call) {
    if (messagesByCall === null) {
      messagesByCall = new Map();
      for (const m of parse("messages")) {
        let list = messagesByCall.get(m[0]);
        if (list === undefined) messagesByCall.set(m[0], (list = []));
        list.push(m);
      }
    }
    const list = messagesByCall.get(call.index) || [];
    return list.slice().sort((a, b) => a[1] - b[1]); // stable: same times keep their order
  }

  // -- formatting ---------------------------------------------------------------------------
  function formatTime(us) {
    const iso = new Date(Math.floor(us / 1000)).toISOString();
    return iso.slice(0, 10) + " " + iso.slice(11, 19) + "." + String(us % 1e6).padStart(6, "0");
  }
  function formatClock(us) {
    return formatTime(us).slice(11);
  }
  function formatDuration(us) {
    const s = us / 1e6;
    if (s < 60) return s.toFixed(3) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s - 60 * m).toFixed(0).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }
  function statusClass(status) {
    if (!status) return "request";
    if (status < 200) return "provisional";
    if (status < 300) return "success";
    return "failure";
  }

  // -- the call list ------------------------------------------------------------------------
  const COLUMNS = [
    { key: "index", title: "#", num: true, text: (c) => String(c.index + 1) },
    { key: "callId", title: "Call-ID" },
    { key: "from", title: "From" },
    { key: "to", title: "To" },
    { key: "method", title: "Method" },
    { key: "first", title: "First (UTC)", num: true, text: (c) => formatTime(c.first) },
    { key: "last", title: "Last", num: true, text: (c) => formatClock(c.last),
      full: (c) => formatTime(c.last) },
    { key: "duration", title: "Duration", num: true, text: (c) => formatDuration(c.duration) },
    { key: "status", title: "Status", num: true, text: (c) => c.statusText,
      cls: (c) => (c.status ? statusClass(c.status) : "") },
    { key: "messages", title: "Msgs", num: true, text: (c) => String(c.messages) },
    { key: "transport", title: "Transport" },
    { key: "tlsVersion", title: "TLS" },
    { key: "suite", title: "Cipher suite" },
  ];
  const state = { filter: "", sort: "first", dir: 1, page: 0, call: null, msg: null };
  let shown = calls; // filtered and sorted
  let shownKey = null;

  function compare(key, dir) {
    const numeric = COLUMNS.find((col) => col.key === key).num;
    return (a, b) => {
      const x = a[key], y = b[key];
      const order = numeric ? x - y : String(x).localeCompare(String(y));
      return dir * (order || a.index - b.index);
    };
  }

  function refreshShown() {
    const key = state.filter + "\u0000" + state.sort + "\u0000" + state.dir;
    if (key === shownKey) return;
    shownKey = key;
    const needle = state.filter.trim().toLowerCase();
    shown = needle ? calls.filter((c) => c.search.includes(needle)) : calls.slice();
    shown.sort(compare(state.sort, state.dir));
  }

  function buildHeader() {
    const row = byId("columns");
    for (const col of COLUMNS) {
      const th = document.createElement("th");
      th.textContent = col.title;
      th.dataset.key = col.key;
      if (col.num) th.className = "num";
      th.addEventListener("click", () => {
        state.dir = state.sort === col.key ? -state.dir : 1;
        state.sort = col.key;
        state.page = 0;
        update();
      });
      row.appendChild(th);
    }
  }

  function renderList() {
    refreshShown();
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    const start = state.page * PAGE_SIZE;
    const rows = [];
    for (const call of shown.slice(start, start + PAGE_SIZE)) {
      const tr = document.createElement("tr");
      tr.className = "call" + (call.callId === state.call ? " open" : "");
      tr.dataset.call = call.callId;
      for (const col of COLUMNS) {
        const td = document.createElement("td");
        td.textContent = col.text ? col.text(call) : call[col.key];
        td.title = col.full ? col.full(call) : td.textContent;
        const cls = [col.num ? "num" : "", col.cls ? col.cls(call) : ""].join(" ").trim();
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => {
        state.call = call.callId;
        state.msg = null;
        update();
        byId("flow").scrollIntoView();
      });
      rows.push(tr);
    }
    byId("call-rows").replaceChildren(...rows);
    for (const th of byId("columns").children) {
      if (th.dataset.key === state.sort) {
        th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
      } else {
        th.removeAttribute("aria-sort");
      }
    }
    const filtered = shown.length === calls.length ? ""
      : " (" + shown.length.toLocaleString("en") + " match the filter)";
    byId("count").textContent = calls.length.toLocaleString("en") + " calls" + filtered;
    byId("count").dataset.total = String(calls.length);
    byId("count").dataset.shown = String(shown.length);
    byId("page").textContent = "page " + (state.page + 1) + " of " + pages;
    byId("prev").disabled = state.page === 0;
    byId("next").disabled = state.page >= pages - 1;
  }

  // -- the ladder ---------------------------------------------------------------------------
  function svg(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderFlow() {
    const started = performance.now();
    const section = byId("flow");
    const call = state.call === null ? undefined : callsById.get(state.call);
    if (call === undefined) {
      section.hidden = true;
      byId("ladder-box").replaceChildren();
      return;
    }
    section.hidden = false;
    byId("flow-title").textContent = "Call " + call.callId;
    const all = messagesOf(call);
    const messages = all.slice(0, MAX_ARROWS);
    byId("flow-note").textContent = [call.from && "From " + call.from, call.to && "To " + call.to,
      call.statusText && "final status " + call.statusText,
      all.length + " messages" + (all.length > messages.length
        ? ", the first " + messages.length + " drawn" : "")].filter(Boolean).join(" \u00b7 ");

    const columns = [];
    const columnOf = new Map();
    for (const m of messages) {
      for (const e of [m[2], m[3]]) {
        if (!columnOf.has(e)) {
          columnOf.set(e, columns.length);
          columns.push(e);
        }
      }
    }
    const left = 190, gap = 260, top = 56, row = 34, right = 140;
    const width = left + gap * Math.max(1, columns.length - 1) + right;
    const height = top + row * messages.length + 24;
    const x = (endpoint) => left + gap * columnOf.get(endpoint);
    const ladder = svg("svg", { id: "ladder", width, height, viewBox: `0 0 ${width} ${height}`,
      role: "img", "aria-label": "ladder diagram of call " + call.callId });
    const defs = svg("defs");
    for (const kind of ["request", "provisional", "success", "failure"]) {
      const marker = svg("marker", { id: "head-" + kind, viewBox: "0 0 10 10", refX: 10, refY: 5,
        markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" });
      marker.appendChild(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "head",
        style: `fill: var(--${kind})` }));
      defs.appendChild(marker);
    }
    ladder.appendChild(defs);
    columns.forEach((endpoint, i) => {
      const cx = left + gap * i;
      ladder.appendChild(svg("text", { x: cx, y: 22, "text-anchor": "middle", class: "endpoint" },
        endpoints[endpoint]));
      ladder.appendChild(svg("line", { x1: cx, y1: 30, x2: cx, y2: height - 8,
        class: "lifeline" }));
    });
    messages.forEach((m, i) => {
      const y = top + row * i + 20;
      const kind = statusClass(m[5]);
      const group = svg("g", { class: "arrow " + kind, tabindex: 0, "data-index": i,
        "data-label": m[4], "data-src": endpoints[m[2]], "data-dst": endpoints[m[3]] });
      group.appendChild(svg("text", { x: 8, y: y + 4, class: "time" }, formatClock(m[1])));
      const x1 = x(m[2]), x2 = x(m[3]);
      let shaft, hit;
      if (x1 === x2) { // to itself: a loop on the lifeline
        const d = `M${x1},${y - 8} h40 v16 h-40`;
        shaft = svg("path", { d, class: "shaft", "marker-end": `url(#head-${kind})` });
        hit = svg("path", { d, class: "hit" });
      } else {
        shaft = svg("line", { x1, y1: y, x2, y2: y, class: "shaft",
          "marker-end": `url(#head-${kind})` });
        hit = svg("line", { x1, y1: y, x2, y2: y, class: "hit" });
      }
      group.appendChild(hit);
      group.appendChild(shaft);
      const labelX = x1 === x2 ? x1 + 48 : (x1 + x2) / 2;
      group.appendChild(svg("text", { x: labelX, y: y - 6, class: "label",
        "text-anchor": x1 === x2 ? "start" : "middle" }, m[4] || "(not SIP)"));
      group.appendChild(svg("title", {}, m[4] + " \u00b7 " + formatClock(m[1]) + " \u00b7 "
        + endpoints[m[2]] + " \u2192 " + endpoints[m[3]]));
      const open = () => {
        state.msg = i;
        writeHash();
        showMessage(messages, i);
      };
      group.addEventListener("click", open);
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") open();
      });
      ladder.appendChild(group);
    });
    byId("ladder-box").replaceChildren(ladder);
    renderMedia(call);
    byId("ladder-box").dataset.drawnMs = String(Math.round(performance.now() - started));
    byId("message-box").hidden = true;
    if (state.msg !== null && state.msg < messages.length) {
      // a link to a message opens it as a click on its arrow would
      ladder.querySelectorAll("g.arrow")[state.msg].dispatchEvent(new MouseEvent("click"));
    }
  }

  // each RTP stream of the call: [source, destination, SSRC, packets, lost, jitter ms,
  // RTCP reports about it, the largest fraction lost they gave (%), their last jitter]
  function renderMedia(call) {
    const rows = [];
    const unknown = (v) => (v < 0 ? "?" : String(v));
    for (const s of call.media) {
      const tr = document.createElement("tr");
      const cells = [s[2].toString(16).padStart(8, "0"),
        s[0] < 0 ? "?" : endpoints[s[0]], s[1] < 0 ? "?" : endpoints[s[1]],
        unknown(s[3]), unknown(s[4]), unknown(s[5]), String(s[6]),
        s[6] ? String(s[7]) : "", s[6] ? unknown(s[8]) : ""];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      rows.push(tr);
    }
    byId("media-rows").replaceChildren(...rows);
    byId("media").hidden = rows.length === 0;
  }

  function showMessage(messages, i) {
    const m = messages[i];
    for (const group of byId("ladder").querySelectorAll("g.arrow")) {
      group.classList.toggle("selected", Number(group.dataset.index) === i);
    }
    const security = m[8] ? m[8] + " " + m[9] : m[7].toUpperCase();
    byId("message-head").textContent = formatTime(m[1]) + " UTC  " + endpoints[m[2]]
      + " \u2192 " + endpoints[m[3]] + "  " + security;
    byId("message").textContent = m[6];
    byId("message-box").hidden = false;
  }

  // -- state in the location's hash ---------------------------------------------------------
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    state.filter = params.get("filter") || "";
    const sort = params.get("sort");
    state.sort = COLUMNS.some((col) => col.key === sort) ? sort : "first";
    state.dir = params.get("dir") === "desc" ? -1 : 1;
    state.page = Math.max(0, (parseInt(params.get("page"), 10) || 1) - 1);
    state.call = params.has("call") ? params.get("call") : null;
    const msg = parseInt(params.get("msg"), 10);
    state.msg = Number.isNaN(msg) ? null : msg;
    byId("filter").value = state.filter;
  }

  let writtenHash = null;
  function writeHash() {
    const params = new URLSearchParams();
    if (state.filter) params.set("filter", state.filter);
    if (state.sort !== "first" || state.dir < 0) {
      params.set("sort", state.sort);
      params.set("dir", state.dir > 0 ? "asc" : "desc");
    }
    if (state.page) params.set("page", String(state.page + 1));
    if (state.call !== null) params.set("call", state.call);
    if (state.msg !== null) params.set("msg", String(state.msg));
    writtenHash = params.toString();
    history.replaceState(null, "", writtenHash ? "#" + writtenHash : location.pathname);
  }

  let drawnCall;
  function update() {
    renderList();
    writeHash();
    if (state.call !== drawnCall) {
      drawnCall = state.call;
      renderFlow();
    }
  }

  // -- start --------------------------------------------------------------------------------
  byId("summary").textContent = meta.calls.toLocaleString("en") + " calls, "
    + meta.messages.toLocaleString("en") + " SIP messages"
    + (meta.not_shown ? ", " + meta.not_shown.toLocaleString("en") + " not shown" : "")
    + " \u00b7 " + meta.generator;
  buildHeader();
  let typing;
  byId("filter").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.filter = event.target.value;
      state.page = 0;
      update();
    }, 120);
  });
  byId("prev").addEventListener("click", () => { state.page -= 1; update(); });
  byId("next").addEventListener("click", () => { state.page += 1; update(); });
  window.addEventListener("hashchange", () => {
    if (location.hash.slice(1) === writtenHash) return;
    readHash();
    drawnCall = undefined;
    update();
  });
  readHash();
  update();
  // for tests and benchmarks: when the page was ready, in ms since navigation started
  document.body.dataset.readyMs = String(Math.round(performance.now()));
})();
