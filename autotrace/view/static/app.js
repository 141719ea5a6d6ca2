// autotrace view: the single-page UI. It routes on location.pathname (/, /search,
// /trace/{traceID}, /services, /map) and reads the JSON API the viewer serves.
//
// Span data is attacker-controlled (URL paths, user agents, exception messages). So the
// DOM is built with createElement/textContent/setAttribute only, never from HTML strings,
// and an href is only ever a same-origin path this file builds (a validated hex id, or a
// query string URLSearchParams encoded). Styles set from here go through element.style,
// which the page's Content-Security-Policy allows.
"use strict";

(function () {
  const app = document.getElementById("app");
  const PALETTE_SIZE = 12;
  const TRACE_ID = /^[0-9a-f]{1,32}$/i;
  const SPAN_ID = /^[0-9a-f]{1,16}$/i;
  const N_PLUS_ONE = 5; // identical CLIENT calls under one parent from which they are flagged

  // ---- DOM helpers -------------------------------------------------------------------

  // el("div", {className: "x", text: "y", "data-a": "b"}, child, ...): attributes by
  // setAttribute, text by textContent; never "href" (see link()).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = String(value);
      else if (name === "href" || name.startsWith("on") || name === "style") throw new Error("el(): " + name);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // A link to a same-origin path built here: "/" followed by fixed text, or encoded values.
  function link(path, text, className) {
    if (typeof path !== "string" || !path.startsWith("/") || path.startsWith("//")) throw new Error("link(): " + path);
    const a = el("a", {className: className, text: text});
    a.setAttribute("href", path);
    return a;
  }

  // A link to /trace/{id} if id is a hex trace id, else the id as plain text.
  function traceLink(id, text, className) {
    if (typeof id === "string" && TRACE_ID.test(id)) return link("/trace/" + id.toLowerCase(), text || id, className);
    return el("span", {className: className, text: text || String(id)});
  }

  function searchPath(params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) if (value !== "" && value !== undefined && value !== null) query.set(key, value);
    const text = query.toString();
    return "/search" + (text ? "?" + text : "");
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // ---- data helpers ------------------------------------------------------------------

  async function getJSON(url) {
    const response = await fetch(url, {headers: {Accept: "application/json"}});
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.errors && body.errors[0] && body.errors[0].msg;
      const error = new Error(message || "HTTP " + response.status);
      error.status = response.status;
      throw error;
    }
    return body || {};
  }

  // The colour class of a service: a stable hash of its name into the palette.
  function serviceClass(service) {
    let hash = 0;
    const name = String(service);
    for (let i = 0; i < name.length; i++) hash = (hash * 31 + name.charCodeAt(i)) >>> 0;
    return "svc-c" + (hash % PALETTE_SIZE);
  }

  function formatDuration(us) {
    if (typeof us !== "number" || !isFinite(us)) return "?";
    if (us < 1000) return Math.round(us) + " µs";
    if (us < 1000000) return (us / 1000).toFixed(us < 10000 ? 2 : 1) + " ms";
    return (us / 1000000).toFixed(2) + " s";
  }

  function formatTime(us) {
    if (typeof us !== "number" || !isFinite(us)) return "?";
    const date = new Date(us / 1000);
    return date.toLocaleString(undefined, {hour12: false}) + "." + String(date.getMilliseconds()).padStart(3, "0");
  }

  function tagValue(tags, key) {
    for (const tag of tags || []) if (tag && tag.key === key) return tag.value;
    return undefined;
  }

  function valueText(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // "1 call", "2 calls".
  function plural(count, noun) {
    return count + " " + noun + (count === 1 ? "" : "s");
  }

  function errorBox(message) {
    return el("p", {className: "error-box", text: message});
  }

  // ---- the trace model ---------------------------------------------------------------

  // Spans of one Jaeger trace as a tree: parents, children sorted by start, roots (spans
  // without a parent and spans whose parent never arrived), the trace's start and end.
  function buildTrace(trace) {
    const processes = trace.processes || {};
    const byID = new Map();
    const spans = [];
    for (const raw of trace.spans || []) {
      if (!raw || typeof raw.spanID !== "string" || byID.has(raw.spanID)) continue;
      const process = processes[raw.processID] || {};
      const span = {
        raw: raw,
        id: raw.spanID,
        name: String(raw.operationName),
        service: String(process.serviceName === undefined ? "unknown" : process.serviceName),
        processTags: process.tags || [],
        start: Number(raw.startTime) || 0,
        duration: Math.max(0, Number(raw.duration) || 0),
        tags: raw.tags || [],
        logs: raw.logs || [],
        parentID: null,
        parent: null,
        missingParent: false,
        children: [],
        links: [],
        depth: 0,
        flags: [],
        critical: [],
      };
      span.end = span.start + span.duration;
      span.kind = String(tagValue(span.tags, "span.kind") || "");
      const errorTag = tagValue(span.tags, "error");
      span.error = errorTag === true || errorTag === "true" || tagValue(span.tags, "otel.status_code") === "ERROR";
      for (const ref of raw.references || []) {
        if (!ref) continue;
        if (ref.refType === "CHILD_OF" && span.parentID === null && (ref.traceID === undefined || ref.traceID === trace.traceID)) span.parentID = ref.spanID;
        else span.links.push(ref);
      }
      byID.set(span.id, span);
      spans.push(span);
    }
    const roots = [];
    for (const span of spans) {
      const parent = span.parentID !== null ? byID.get(span.parentID) : undefined;
      if (parent && parent !== span) {
        span.parent = parent;
        parent.children.push(span);
      } else {
        if (span.parentID !== null) span.missingParent = true;
        roots.push(span);
      }
    }
    const byStart = (a, b) => a.start - b.start || a.end - b.end;
    roots.sort(byStart);
    let start = Infinity;
    let end = -Infinity;
    for (const span of spans) {
      span.children.sort(byStart);
      start = Math.min(start, span.start);
      end = Math.max(end, span.end);
    }
    // Depths and the order rows are drawn in; a parent cycle cannot occur (a span whose
    // parent chain loops has no root to reach it from, so it is dropped with a warning).
    const ordered = [];
    const stack = roots.slice().reverse();
    const seen = new Set();
    while (stack.length) {
      const span = stack.pop();
      if (seen.has(span)) continue;
      seen.add(span);
      span.depth = span.parent && seen.has(span.parent) ? span.parent.depth + 1 : 0;
      ordered.push(span);
      for (let i = span.children.length - 1; i >= 0; i--) stack.push(span.children[i]);
    }
    const model = {traceID: trace.traceID, spans: ordered, byID: byID, roots: roots, start: start, end: end, warnings: []};
    if (ordered.length < spans.length) model.warnings.push(spans.length - ordered.length + " spans in a parent cycle are not shown");
    flagRepeatedCalls(model);
    criticalPath(model);
    return model;
  }

  // The target of a CLIENT span: where the call went.
  function callTarget(span) {
    const address = tagValue(span.tags, "server.address");
    if (address !== undefined) {
      const port = tagValue(span.tags, "server.port");
      return String(address) + (port !== undefined ? ":" + port : "");
    }
    for (const key of ["url.full", "http.url", "peer.service", "net.peer.name", "db.system"]) {
      const value = tagValue(span.tags, key);
      if (value !== undefined) return String(value);
    }
    return "";
  }

  // Flags N or more CLIENT spans with the same name and target under one parent (N+1).
  function flagRepeatedCalls(model) {
    model.repeated = [];
    for (const parent of model.spans) {
      const groups = new Map();
      for (const child of parent.children) {
        if (child.kind !== "client") continue;
        const target = callTarget(child);
        const key = child.name + "\u0000" + target;
        if (!groups.has(key)) groups.set(key, {name: child.name, target: target, parent: parent, spans: []});
        groups.get(key).spans.push(child);
      }
      for (const group of groups.values()) {
        if (group.spans.length < N_PLUS_ONE) continue;
        model.repeated.push(group);
        for (const span of group.spans) span.repeatedCount = group.spans.length;
      }
    }
  }

  // The critical path, as Jaeger computes it: from a span's end, the child that finishes
  // last lies on the path (recursively); the parent's own time between its children, and
  // before the first of them, is on the path too. Sections go to span.critical as
  // [start, end] pairs in microseconds.
  function criticalPath(model) {
    const root = model.roots.find((span) => !span.missingParent) || model.roots[0];
    if (!root) return;
    walk(root, root.end);

    function walk(span, until) {
      let cursor = Math.min(until, span.end);
      // Children clipped to the span; walked from the one that ends last backwards.
      const children = span.children
        .map((child) => ({span: child, start: Math.max(child.start, span.start), end: Math.min(child.end, span.end)}))
        .filter((child) => child.end > child.start || child.span.duration === 0);
      for (let guard = 0; guard <= children.length; guard++) {
        let best = null;
        for (const child of children) {
          if (child.start >= cursor || child.done) continue;
          if (best === null || Math.min(child.end, cursor) > Math.min(best.end, cursor)) best = child;
        }
        if (best === null) break;
        best.done = true;
        const childEnd = Math.min(best.end, cursor);
        if (cursor > childEnd) span.critical.push([childEnd, cursor]);
        walk(best.span, childEnd);
        cursor = best.start;
      }
      if (cursor > span.start) span.critical.push([span.start, cursor]);
      else if (span.duration === 0 && span.critical.length === 0) span.critical.push([span.start, span.start]);
    }
  }

  // ---- pages -------------------------------------------------------------------------

  function setActiveNav(name) {
    for (const a of document.querySelectorAll("header.top nav a")) {
      a.classList.toggle("active", a.getAttribute("data-nav") === name);
    }
  }

  function route() {
    const path = location.pathname;
    let match;
    if (path === "/" || path === "/search" || path === "/search/") return searchPage();
    if ((match = /^\/trace\/([^/]+)\/?$/.exec(path))) return tracePage(decodeURIComponent(match[1]));
    if (path === "/services" || path === "/services/") return servicesPage();
    if (path === "/map" || path === "/map/") return mapPage();
    clear(app);
    app.append(el("h1", {text: "Not found"}), el("p", {}, "No page here. ", link("/search", "Search traces")));
    return undefined;
  }

  // ---- trace page --------------------------------------------------------------------

  async function tracePage(traceID) {
    setActiveNav("");
    clear(app);
    if (!TRACE_ID.test(traceID)) {
      app.append(el("h1", {text: "Trace"}), errorBox("Not a trace id: " + traceID));
      return;
    }
    traceID = traceID.toLowerCase();
    document.title = "Trace " + traceID + " · autotrace view";
    app.append(el("p", {className: "muted", text: "Loading trace " + traceID + "…"}));
    let body;
    try {
      body = await getJSON("/api/traces/" + encodeURIComponent(traceID));
    } catch (error) {
      clear(app);
      app.append(el("h1", {text: "Trace " + traceID}), errorBox(error.status === 404 ? "Trace not found." : "Could not load the trace: " + error.message));
      return;
    }
    const trace = (body.data || [])[0];
    clear(app);
    if (!trace || !Array.isArray(trace.spans) || trace.spans.length === 0) {
      app.append(el("h1", {text: "Trace " + traceID}), errorBox("Trace not found."));
      return;
    }
    const model = buildTrace(trace);
    if (!model.roots.length) {
      app.append(el("h1", {text: "Trace " + traceID}), errorBox("No span of this trace can be drawn: " + model.warnings.join("; ")));
      return;
    }
    renderTrace(model, traceID);
  }

  function renderTrace(model, traceID) {
    const root = model.roots[0];
    const services = new Set(model.spans.map((span) => span.service));
    const errors = model.spans.filter((span) => span.error).length;
    const total = Math.max(model.end - model.start, 1);

    const title = el("h1", {className: "trace-title"},
      el("span", {className: "svc-name " + serviceClass(root.service), text: root.service}), " ",
      el("span", {text: root.name}));
    const download = link("/api/autotrace/traces/" + traceID + "/otlp", "Download OTLP JSON", "button download");
    download.setAttribute("download", "trace-" + traceID + ".json");
    const facts = el("dl", {className: "facts"},
      el("dt", {text: "Trace ID"}), el("dd", {className: "mono", text: traceID}),
      el("dt", {text: "Started"}), el("dd", {text: formatTime(model.start)}),
      el("dt", {text: "Duration"}), el("dd", {text: formatDuration(model.end - model.start)}),
      el("dt", {text: "Services"}), el("dd", {text: String(services.size)}),
      el("dt", {text: "Spans"}), el("dd", {text: String(model.spans.length)}),
      el("dt", {text: "Errors"}), el("dd", {className: errors ? "err-text" : "", text: String(errors)}));
    app.append(el("div", {className: "trace-head"}, title, download), facts);

    const legend = el("ul", {className: "legend"});
    for (const service of [...services].sort()) {
      legend.append(el("li", {}, el("span", {className: "swatch " + serviceClass(service)}), service));
    }
    legend.append(el("li", {}, el("span", {className: "swatch cp-swatch"}), "critical path"));
    app.append(legend);

    const flagList = el("ul", {className: "flags", id: "trace-flags"});
    for (const span of model.spans) {
      if (span.missingParent) {
        flagList.append(el("li", {className: "flag flag-orphan"}, "Parent never arrived: ",
          el("strong", {text: span.service + ": " + span.name}), " (parent span " + span.parentID + ")"));
      }
    }
    for (const group of model.repeated) {
      flagList.append(el("li", {className: "flag flag-repeated"},
        group.spans.length + " identical CLIENT calls ",
        el("strong", {text: group.name}), group.target ? " to " + group.target : "",
        " under ", el("strong", {text: group.parent.service + ": " + group.parent.name}), " (N+1?)"));
    }
    for (const warning of model.warnings) flagList.append(el("li", {className: "flag", text: warning}));
    if (flagList.childElementCount) app.append(flagList);

    const waterfall = el("div", {className: "waterfall", id: "waterfall"});
    const header = el("div", {className: "wf-row wf-header"},
      el("div", {className: "wf-name", text: "Service: operation"}),
      el("div", {className: "wf-timeline"}, ...[0, 0.25, 0.5, 0.75, 1].map((f) => {
        const tick = el("span", {className: "tick", text: formatDuration(total * f)});
        tick.style.left = f * 100 + "%";
        return tick;
      })));
    waterfall.append(header);
    const rows = new Map();
    const collapsed = new Set();
    for (const span of model.spans) {
      const row = spanRow(span, model, total, collapsed, rows);
      rows.set(span, row);
      waterfall.append(row);
    }
    app.append(waterfall);
    // For benchmarks and tests: the time from navigation to a drawn waterfall.
    if (window.performance && performance.mark) performance.mark("autotrace:trace-rendered");
  }

  function spanRow(span, model, total, collapsed, rows) {
    const row = el("div", {className: "wf-row span-row", "data-span-id": span.id, "data-service": span.service});
    if (span.error) row.classList.add("is-error");
    if (span.critical.length) row.classList.add("on-critical-path");
    if (span.missingParent) row.classList.add("missing-parent");
    if (span.repeatedCount) row.classList.add("repeated-call");

    const name = el("div", {className: "wf-name"});
    name.style.paddingLeft = 0.2 + span.depth * 1.1 + "em";
    if (span.children.length) {
      const toggle = el("button", {className: "toggle", type: "button", title: "Collapse", "aria-expanded": "true", text: "▾"});
      toggle.addEventListener("click", (event) => {
        event.stopPropagation();
        if (collapsed.has(span)) collapsed.delete(span);
        else collapsed.add(span);
        const isCollapsed = collapsed.has(span);
        toggle.textContent = isCollapsed ? "▸" : "▾";
        toggle.setAttribute("aria-expanded", String(!isCollapsed));
        toggle.title = isCollapsed ? "Expand" : "Collapse";
        updateHidden(model, collapsed, rows);
      });
      name.append(toggle);
    } else {
      name.append(el("span", {className: "toggle-space"}));
    }
    name.append(el("span", {className: "swatch " + serviceClass(span.service)}),
      el("span", {className: "svc", text: span.service}), " ",
      el("span", {className: "op", text: span.name}));
    if (span.error) name.append(el("span", {className: "badge badge-error", title: "error", text: "!"}));
    if (span.missingParent) name.append(el("span", {className: "badge badge-orphan", title: "parent span never arrived", text: "orphan"}));
    if (span.repeatedCount) name.append(el("span", {className: "badge badge-repeated", title: "repeated identical CLIENT call", text: "×" + span.repeatedCount}));

    const timeline = el("div", {className: "wf-timeline"});
    const bar = el("div", {className: "bar " + serviceClass(span.service)});
    bar.style.left = ((span.start - model.start) / total) * 100 + "%";
    bar.style.width = Math.max((span.duration / total) * 100, 0.2) + "%";
    timeline.append(bar);
    for (const [from, to] of span.critical) {
      const section = el("div", {className: "cp"});
      section.style.left = ((from - model.start) / total) * 100 + "%";
      section.style.width = Math.max(((to - from) / total) * 100, 0.2) + "%";
      timeline.append(section);
    }
    // The duration beside the bar: after it, or before it when the bar ends near the edge.
    const label = el("span", {className: "bar-label", text: formatDuration(span.duration)});
    const endPercent = ((span.end - model.start) / total) * 100;
    if (endPercent < 85) label.style.left = endPercent + "%";
    else {
      label.classList.add("before");
      label.style.right = 100 - ((span.start - model.start) / total) * 100 + "%";
    }
    timeline.append(label);

    row.append(name, timeline);
    row.addEventListener("click", () => toggleDetail(row, span, model));
    return row;
  }

  function updateHidden(model, collapsed, rows) {
    for (const span of model.spans) {
      let hidden = false;
      for (let up = span.parent; up; up = up.parent) {
        if (collapsed.has(up)) {
          hidden = true;
          break;
        }
      }
      const row = rows.get(span);
      row.hidden = hidden;
      const detail = row.nextElementSibling;
      if (detail && detail.classList.contains("span-detail") && hidden) detail.remove();
    }
  }

  function toggleDetail(row, span, model) {
    const next = row.nextElementSibling;
    if (next && next.classList.contains("span-detail")) {
      next.remove();
      row.classList.remove("selected");
      return;
    }
    row.classList.add("selected");
    row.after(spanDetail(span, model));
  }

  function kvTable(tags, className) {
    const table = el("table", {className: "kv " + (className || "")});
    for (const tag of tags || []) {
      if (!tag) continue;
      table.append(el("tr", {}, el("th", {text: valueText(tag.key)}), el("td", {text: valueText(tag.value)})));
    }
    if (!table.childElementCount) table.append(el("tr", {}, el("td", {className: "muted", text: "none"})));
    return table;
  }

  function spanDetail(span, model) {
    const box = el("div", {className: "span-detail", "data-span-id": span.id});
    box.append(el("h2", {}, el("span", {className: "svc-name " + serviceClass(span.service), text: span.service}), " ", el("span", {text: span.name})));
    box.append(el("dl", {className: "facts"},
      el("dt", {text: "Span ID"}), el("dd", {className: "mono", text: span.id}),
      el("dt", {text: "Kind"}), el("dd", {text: span.kind || "?"}),
      el("dt", {text: "Start"}), el("dd", {text: "+" + formatDuration(span.start - model.start)}),
      el("dt", {text: "Duration"}), el("dd", {text: formatDuration(span.duration)}),
      el("dt", {text: "Status"}), el("dd", {className: span.error ? "err-text" : "", text: valueText(tagValue(span.tags, "otel.status_code") || "UNSET")})));
    if (span.missingParent) box.append(el("p", {className: "flag flag-orphan", text: "The parent span (" + span.parentID + ") never arrived."}));
    if (span.repeatedCount) box.append(el("p", {className: "flag flag-repeated", text: "One of " + span.repeatedCount + " identical CLIENT calls under the same parent."}));

    box.append(el("h3", {text: "Attributes"}), kvTable(span.tags, "attributes"));
    box.append(el("h3", {text: "Resource"}), kvTable(span.processTags, "resource"));

    const exceptions = span.logs.filter((log) => log && tagValue(log.fields, "event") === "exception");
    if (exceptions.length) {
      box.append(el("h3", {text: "Exceptions"}));
      for (const log of exceptions) {
        const type = tagValue(log.fields, "exception.type");
        const message = tagValue(log.fields, "exception.message");
        const stack = tagValue(log.fields, "exception.stacktrace");
        const item = el("div", {className: "exception"},
          el("p", {className: "exc-head"}, el("strong", {text: valueText(type === undefined ? "Exception" : type)}), message === undefined ? "" : ": " + valueText(message)));
        if (stack !== undefined) item.append(el("pre", {className: "stacktrace", text: valueText(stack)}));
        box.append(item);
      }
    }

    box.append(el("h3", {text: "Events"}));
    if (span.logs.length) {
      const list = el("ol", {className: "events"});
      for (const log of span.logs) {
        if (!log) continue;
        const event = tagValue(log.fields, "event");
        list.append(el("li", {},
          el("span", {className: "event-time", text: "+" + formatDuration(Number(log.timestamp) - model.start)}), " ",
          el("strong", {className: "event-name", text: valueText(event === undefined ? "log" : event)}),
          kvTable((log.fields || []).filter((field) => field && field.key !== "event"), "event-fields")));
      }
      box.append(list);
    } else {
      box.append(el("p", {className: "muted", text: "none"}));
    }

    box.append(el("h3", {text: "Links"}));
    if (span.links.length) {
      const list = el("ul", {className: "links"});
      for (const ref of span.links) {
        const item = el("li", {}, el("span", {className: "ref-type", text: valueText(ref.refType)}), " ");
        item.append(traceLink(ref.traceID, "trace " + valueText(ref.traceID), "span-link"));
        item.append(" span ", el("span", {className: "mono", text: valueText(ref.spanID)}));
        list.append(item);
      }
      box.append(list);
    } else {
      box.append(el("p", {className: "muted", text: "none"}));
    }
    return box;
  }

  // ---- search page -------------------------------------------------------------------

  const LOOKBACKS = [["15m", "Last 15 minutes"], ["1h", "Last hour"], ["6h", "Last 6 hours"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["", "Any time"]];
  const LIMITS = ["20", "50", "100"];
  let liveTimer = null;

  function selectBox(name, options, selected, label) {
    const select = el("select", {name: name, id: "f-" + name, "aria-label": label});
    for (const [value, text] of options) {
      const option = el("option", {value: value, text: text});
      if (value === selected) option.selected = true;
      select.append(option);
    }
    return select;
  }

  function field(label, control) {
    return el("label", {className: "field"}, el("span", {text: label}), control);
  }

  // key=value pairs separated by spaces (a value may be "quoted"), as Jaeger's UI takes them.
  function parseTags(text) {
    const tags = {};
    const pattern = /([^\s=]+)=("([^"]*)"|\S*)/g;
    let match;
    while ((match = pattern.exec(text || ""))) tags[match[1]] = match[3] !== undefined ? match[3] : match[2];
    return tags;
  }

  function apiQuery(params) {
    const query = new URLSearchParams();
    for (const key of ["service", "operation", "minDuration", "maxDuration", "lookback"]) {
      const value = (params.get(key) || "").trim();
      if (value) query.set(key, value);
    }
    const tags = parseTags(params.get("tags"));
    if (params.get("errors") === "1") tags.error = "true";
    if (Object.keys(tags).length) query.set("tags", JSON.stringify(tags));
    const traceIDs = (params.get("traceID") || "").split(/[\s,]+/).filter((id) => TRACE_ID.test(id));
    for (const id of traceIDs) query.append("traceID", id.toLowerCase());
    query.set("limit", LIMITS.includes(params.get("limit")) ? params.get("limit") : "20");
    query.set("offset", String(Math.max(0, parseInt(params.get("offset") || "0", 10) || 0)));
    return query;
  }

  async function searchPage() {
    setActiveNav("search");
    document.title = "Search · autotrace view";
    clear(app);
    const params = new URLSearchParams(location.search);
    if (!params.has("lookback")) params.set("lookback", "1h");

    const serviceSelect = el("select", {name: "service", id: "f-service", "aria-label": "Service"}, el("option", {value: "", text: "All services"}));
    const operationSelect = el("select", {name: "operation", id: "f-operation", "aria-label": "Operation"}, el("option", {value: "", text: "All operations"}));
    const errorsBox = el("input", {type: "checkbox", name: "errors", value: "1", id: "f-errors"});
    errorsBox.checked = params.get("errors") === "1";
    const form = el("form", {className: "search-form", method: "get", action: "/search", id: "search-form"},
      field("Service", serviceSelect),
      field("Operation", operationSelect),
      field("Tags", el("input", {type: "text", name: "tags", id: "f-tags", placeholder: "http.response.status_code=500 key=value", value: params.get("tags") || ""})),
      field("Min duration", el("input", {type: "text", name: "minDuration", id: "f-minDuration", placeholder: "e.g. 100ms", size: "8", value: params.get("minDuration") || ""})),
      field("Max duration", el("input", {type: "text", name: "maxDuration", id: "f-maxDuration", placeholder: "e.g. 1.5s", size: "8", value: params.get("maxDuration") || ""})),
      field("Time range", selectBox("lookback", LOOKBACKS, params.get("lookback"), "Time range")),
      field("Trace ID", el("input", {type: "text", name: "traceID", id: "f-traceID", placeholder: "32 hex digits", value: params.get("traceID") || ""})),
      field("Limit", selectBox("limit", LIMITS.map((n) => [n, n]), params.get("limit") || "20", "Limit")),
      el("label", {className: "field check"}, errorsBox, el("span", {text: "Errors only"})),
      el("button", {type: "submit", id: "f-submit", text: "Find traces"}));
    const liveBox = el("input", {type: "checkbox", id: "live-tail"});
    liveBox.checked = params.get("live") === "1";
    const results = el("div", {id: "results"});
    app.append(el("h1", {text: "Search traces"}), form,
      el("div", {className: "result-bar"}, el("label", {className: "check"}, liveBox, el("span", {text: "Live tail (every 2 s)"})), el("span", {id: "result-count", className: "muted"})),
      results);

    // Services and the chosen service's operations.
    getJSON("/api/services").then((body) => {
      const names = (body.data || []).map(String).sort();
      for (const name of names) serviceSelect.append(el("option", {value: name, text: name}));
      serviceSelect.value = names.includes(params.get("service")) ? params.get("service") : "";
      return loadOperations(serviceSelect.value, params.get("operation"));
    }).catch((error) => results.before(errorBox("Could not load services: " + error.message)));
    serviceSelect.addEventListener("change", () => loadOperations(serviceSelect.value, "").catch(() => undefined));

    async function loadOperations(service, selected) {
      clear(operationSelect);
      operationSelect.append(el("option", {value: "", text: "All operations"}));
      if (!service) return;
      const body = await getJSON("/api/services/" + encodeURIComponent(service) + "/operations");
      const names = (body.data || []).map((op) => String(op && typeof op === "object" ? op.name : op)).sort();
      for (const name of names) operationSelect.append(el("option", {value: name, text: name}));
      if (selected && names.includes(selected)) operationSelect.value = selected;
    }

    // Submitting keeps only the fields that are set in the URL, so links stay short.
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const fields = {};
      for (const [key, value] of new FormData(form)) if (typeof value === "string" && value.trim()) fields[key] = value.trim();
      if (liveBox.checked) fields.live = "1";
      location.assign(searchPath(fields));
    });

    const load = () => loadResults(params, results);
    liveBox.addEventListener("change", () => {
      if (liveBox.checked) params.set("live", "1");
      else params.delete("live");
      history.replaceState(null, "", searchPath(Object.fromEntries(params)));
      setLive(liveBox.checked, load);
    });
    await load();
    setLive(liveBox.checked, load);
  }

  function setLive(on, load) {
    if (liveTimer !== null) clearInterval(liveTimer);
    liveTimer = on ? setInterval(load, 2000) : null;
  }

  async function loadResults(params, results) {
    const query = apiQuery(params);
    let body;
    try {
      body = await getJSON("/api/autotrace/summaries?" + query.toString());
    } catch (error) {
      clear(results);
      results.append(errorBox("Search failed: " + error.message));
      return;
    }
    const items = (body.data || []).slice().sort((a, b) => (Number(b.startTime) || 0) - (Number(a.startTime) || 0));
    const offset = Number(query.get("offset"));
    const limit = Number(query.get("limit"));
    const total = typeof body.total === "number" ? body.total : offset + items.length;
    const count = document.getElementById("result-count");
    if (count) count.textContent = items.length ? `Traces ${offset + 1}–${offset + items.length} of ${total}` : "No traces found";
    clear(results);
    const longest = Math.max(1, ...items.map((item) => Number(item.duration) || 0));
    const list = el("ol", {className: "result-list"});
    for (const item of items) list.append(resultItem(item, longest));
    results.append(list);

    const pager = el("nav", {className: "pager"});
    const here = Object.fromEntries(params);
    if (offset > 0) pager.append(link(searchPath({...here, offset: String(Math.max(0, offset - limit))}), "← Newer", "button pager-prev"));
    if (offset + items.length < total) pager.append(link(searchPath({...here, offset: String(offset + limit)}), "Older →", "button pager-next"));
    results.append(pager);
  }

  function resultItem(item, longest) {
    const id = String(item.traceID);
    const errors = Number(item.errors) || 0;
    const head = el("div", {className: "result-head"});
    const rootText = item.rootService === undefined ? "(no root span)" : String(item.rootService) + ": " + String(item.rootOperation);
    head.append(traceLink(id, rootText, "result-title"));
    if (errors) head.append(el("span", {className: "badge badge-error", title: errors + " error spans", text: errors + " error" + (errors > 1 ? "s" : "")}));
    head.append(el("span", {className: "result-duration", text: formatDuration(Number(item.duration))}));
    const bar = el("div", {className: "duration-bar" + (errors ? " has-error" : "")});
    bar.style.width = Math.max(((Number(item.duration) || 0) / longest) * 100, 0.5) + "%";
    const services = el("ul", {className: "result-services"});
    for (const service of item.services || []) services.append(el("li", {className: "svc-name " + serviceClass(service), text: String(service)}));
    const meta = el("div", {className: "result-meta"},
      el("span", {className: "span-count", text: (Number(item.spanCount) || 0) + " spans"}), services,
      el("span", {className: "muted", text: formatTime(Number(item.startTime))}),
      el("span", {className: "mono muted", text: id}));
    return el("li", {className: "result" + (errors ? " is-error" : ""), "data-trace-id": id}, head, el("div", {className: "duration-track"}, bar), meta);
  }

  // ---- services page -----------------------------------------------------------------

  // The start of a page over a time window (services, map): heading, the window chosen
  // from ?lookback= (default 1h; changing it reloads the page), and a holder for the rest.
  function windowPage(nav, heading, path, holderID) {
    setActiveNav(nav);
    document.title = heading + " · autotrace view";
    clear(app);
    const wanted = new URLSearchParams(location.search).get("lookback");
    const lookback = WINDOWS_MS[wanted] ? wanted : "1h";
    const windowSelect = selectBox("lookback", LOOKBACKS.filter(([value]) => value), lookback, "Window");
    const form = el("form", {className: "search-form", method: "get", action: path}, field("Window", windowSelect));
    windowSelect.addEventListener("change", () => form.submit());
    const holder = el("div", {id: holderID}, el("p", {className: "muted", text: "Loading…"}));
    app.append(el("h1", {text: heading}), form, holder);
    return {lookback: lookback, holder: holder};
  }

  async function servicesPage() {
    const {lookback, holder} = windowPage("services", "Services", "/services", "stats");
    let body;
    try {
      body = await getJSON("/api/autotrace/stats?lookback=" + encodeURIComponent(lookback));
    } catch (error) {
      clear(holder);
      holder.append(errorBox("Could not load statistics: " + error.message));
      return;
    }
    clear(holder);
    const rows = (body.data || []).filter(Boolean).slice().sort((a, b) => String(a.service).localeCompare(String(b.service)) || (Number(b.count) || 0) - (Number(a.count) || 0));
    if (!rows.length) {
      holder.append(el("p", {className: "muted", text: "No spans in this window."}));
      return;
    }
    const table = el("table", {className: "stats", id: "stats-table"},
      el("thead", {}, el("tr", {}, ...["Service", "Operation", "Requests", "Error rate", "p50", "p95", "p99"].map((text) => el("th", {text: text})))));
    const tbody = el("tbody");
    let previous = null;
    for (const row of rows) {
      const service = String(row.service);
      const count = Number(row.count) || 0;
      const errors = Number(row.errors) || 0;
      const rate = count ? (errors / count) * 100 : 0;
      const serviceCell = el("td", {className: "stat-service"});
      if (service !== previous) serviceCell.append(el("span", {className: "svc-name " + serviceClass(service), text: service}));
      previous = service;
      tbody.append(el("tr", {"data-service": service, "data-operation": String(row.operation)},
        serviceCell,
        el("td", {}, link(searchPath({service: service, operation: String(row.operation), lookback: lookback}), String(row.operation))),
        el("td", {className: "num", text: String(count)}),
        el("td", {className: "num" + (errors ? " err-text" : ""), text: rate.toFixed(rate && rate < 10 ? 1 : 0) + "%"}),
        el("td", {className: "num", text: formatDuration(Number(row.p50))}),
        el("td", {className: "num", text: formatDuration(Number(row.p95))}),
        el("td", {className: "num", text: formatDuration(Number(row.p99))})));
    }
    table.append(tbody);
    holder.append(table);
  }

  // ---- service map -------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  const WINDOWS_MS = {"15m": 900000, "1h": 3600000, "6h": 21600000, "24h": 86400000, "7d": 604800000};

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = String(value);
      else if (name === "href" || name.startsWith("on") || name === "style") throw new Error("svg(): " + name);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) node.append(child);
    return node;
  }

  async function mapPage() {
    const {lookback, holder} = windowPage("map", "Service map", "/map", "map");
    let body;
    try {
      // Jaeger's dependencies API takes endTs and lookback in milliseconds.
      body = await getJSON("/api/dependencies?endTs=" + Date.now() + "&lookback=" + WINDOWS_MS[lookback]);
    } catch (error) {
      clear(holder);
      holder.append(errorBox("Could not load dependencies: " + error.message));
      return;
    }
    clear(holder);
    const edges = (body.data || []).filter((edge) => edge && String(edge.parent) !== String(edge.child))
      .map((edge) => ({parent: String(edge.parent), child: String(edge.child), calls: Number(edge.callCount) || 0, errors: Number(edge.errorCount) || 0}));
    if (!edges.length) {
      holder.append(el("p", {className: "muted", text: "No calls between services in this window."}));
      return;
    }
    holder.append(drawMap(edges));
    const table = el("table", {className: "stats edges", id: "edge-table"},
      el("thead", {}, el("tr", {}, el("th", {text: "Caller"}), el("th", {text: "Callee"}), el("th", {text: "Calls"}), el("th", {text: "Errors"}))));
    const tbody = el("tbody");
    for (const edge of edges) {
      tbody.append(el("tr", {"data-parent": edge.parent, "data-child": edge.child},
        el("td", {text: edge.parent}), el("td", {text: edge.child}), el("td", {className: "num", text: String(edge.calls)}),
        el("td", {className: "num" + (edge.errors ? " err-text" : ""), text: String(edge.errors)})));
    }
    table.append(tbody);
    holder.append(table);
  }

  // A layered layout: a service's layer is the longest call chain that reaches it (cycles
  // are cut where they close), layers are columns from left to right.
  function drawMap(edges) {
    const names = [...new Set(edges.flatMap((edge) => [edge.parent, edge.child]))].sort();
    const out = new Map(names.map((name) => [name, []]));
    for (const edge of edges) out.get(edge.parent).push(edge.child);
    const layer = new Map(names.map((name) => [name, 0]));
    for (let pass = 0; pass < names.length; pass++) {
      let changed = false;
      for (const edge of edges) {
        if (layer.get(edge.child) < layer.get(edge.parent) + 1 && layer.get(edge.parent) + 1 < names.length) {
          layer.set(edge.child, layer.get(edge.parent) + 1);
          changed = true;
        }
      }
      if (!changed) break;
    }
    const columns = [];
    for (const name of names) (columns[layer.get(name)] = columns[layer.get(name)] || []).push(name);
    const dense = columns.filter(Boolean);
    const nodeW = 170;
    const nodeH = 40;
    const gapX = 110;
    const gapY = 36;
    const tallest = Math.max(...dense.map((column) => column.length));
    const width = dense.length * nodeW + (dense.length - 1) * gapX + 40;
    const height = tallest * nodeH + (tallest - 1) * gapY + 40;
    const position = new Map();
    dense.forEach((column, x) => {
      const offset = ((tallest - column.length) * (nodeH + gapY)) / 2;
      column.forEach((name, y) => position.set(name, {x: 20 + x * (nodeW + gapX), y: 20 + offset + y * (nodeH + gapY)}));
    });
    const root = svg("svg", {class: "service-map", id: "service-map", viewBox: `0 0 ${width} ${height}`, width: width, height: height, role: "img", "aria-label": "Service map"});
    root.append(svg("defs", {}, svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse"},
      svg("path", {d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head"}))));
    for (const edge of edges) {
      const from = position.get(edge.parent);
      const to = position.get(edge.child);
      const forward = to.x > from.x;
      const x1 = forward ? from.x + nodeW : from.x + nodeW / 2;
      const y1 = forward ? from.y + nodeH / 2 : from.y + nodeH;
      const x2 = forward ? to.x : to.x + nodeW / 2;
      const y2 = forward ? to.y + nodeH / 2 : to.y + (to.y > from.y ? 0 : nodeH);
      const group = svg("g", {class: "edge" + (edge.errors ? " has-error" : ""), "data-parent": edge.parent, "data-child": edge.child});
      const bend = forward ? 0 : 60;
      group.append(svg("path", {d: `M ${x1} ${y1} C ${(x1 + x2) / 2 + bend} ${y1}, ${(x1 + x2) / 2 + bend} ${y2}, ${x2} ${y2}`, "marker-end": "url(#arrow)"}));
      group.append(svg("text", {x: (x1 + x2) / 2 + bend * 0.75, y: (y1 + y2) / 2 - 6, class: "edge-label", text: plural(edge.calls, "call") + (edge.errors ? ", " + plural(edge.errors, "error") : "")}));
      root.append(group);
    }
    for (const name of names) {
      const {x, y} = position.get(name);
      const label = name.length > 22 ? name.slice(0, 21) + "…" : name;
      root.append(svg("g", {class: "node " + serviceClass(name), "data-service": name},
        svg("title", {text: name}),
        svg("rect", {x: x, y: y, width: nodeW, height: nodeH, rx: 6}),
        svg("text", {x: x + nodeW / 2, y: y + nodeH / 2 + 5, "text-anchor": "middle", text: label})));
    }
    return el("div", {className: "map-box"}, root);
  }

  route();
})();
