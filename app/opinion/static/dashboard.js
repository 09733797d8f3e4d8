// The opinion dashboard: polls the monitor's JSON API every 2 s and draws the entity table, the timeline (inline
// SVG), the alerts with their evidence and the latest negative items. Every text from the API goes into the page
// through textContent on elements made with createElement(NS), never as HTML, so a text cannot inject markup.
"use strict";

(function () {
  const POLL_MS = 2000;
  const MARKET = "(market)";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const W = 760, LEFT = 48, RIGHT = 12;
  const SHARE_TOP = 14, SHARE_H = 160, VOLUME_TOP = 196, VOLUME_H = 70, LABEL_Y = 290;

  const statusLine = document.getElementById("status");
  const entityTable = document.getElementById("entities");
  const select = document.getElementById("entity-select");
  const chart = document.getElementById("timeline");
  const alertList = document.getElementById("alerts");
  const itemList = document.getElementById("items");
  const shown = {entities: null, alerts: null, items: null, timeline: null};  // what is drawn, as JSON
  let alertsNow = [];
  let timer = null;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach((name) => node.setAttribute(name, String(attrs[name])));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function tip(node, text) {  // a hover title on an SVG element
    node.appendChild(svg("title", {}, text));
    return node;
  }

  function percent(value) {
    return value === null || value === undefined ? "\u2013" : (100 * Number(value)).toFixed(1) + "%";
  }

  function shortTime(iso) {  // "2026-01-05T13:00:00Z" → "01-05 13:00" (UTC, as the API gives it)
    const text = String(iso || "");
    return text.length >= 16 ? text.slice(5, 10) + " " + text.slice(11, 16) : text;
  }

  async function getJSON(path) {
    let response;
    try {
      response = await fetch(path, {cache: "no-store"});
    } catch (err) {
      throw new Error("could not reach the monitor");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) throw new Error((data && data.error) || path + " answered " + response.status);
    return data;
  }

  function changed(key, value) {
    const text = JSON.stringify(value);
    if (shown[key] === text) return false;
    shown[key] = text;
    return true;
  }

  // === the entity table and the selector ===

  function renderEntities(entities) {
    if (!changed("entities", entities)) return;
    const names = Object.keys(entities);
    const rows = names.map((name) => {
      const row = entities[name];
      const tr = el("tr", name === MARKET ? "market" : "");
      tr.dataset.entity = name;
      if (name === select.value) tr.classList.add("selected");
      tr.append(el("td", "name", name), el("td", "", row.mentions), el("td", "", row.negative),
                el("td", "", percent(row.negative_share)), el("td", "", percent(row.base_share)),
                el("td", row.alerts ? "alerting" : "", row.alerts));
      tr.addEventListener("click", () => choose(name));
      return tr;
    });
    entityTable.replaceChildren(...rows);
    const options = Array.from(select.options).map((o) => o.value);
    if (JSON.stringify(options) !== JSON.stringify(names)) {
      const keep = select.value;
      select.replaceChildren(...names.map((name) => {
        const option = el("option", "", name);
        option.value = name;
        return option;
      }));
      if (names.includes(keep)) select.value = keep;
    }
  }

  function choose(name) {
    select.value = name;
    entityTable.querySelectorAll("tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.entity === name));
    refreshTimeline().catch(showError);
  }

  // === the timeline ===

  function bucketOf(alert, buckets, windowS) {
    const at = Date.parse(alert.window_start || alert.time) / 1000;
    const start = Math.floor(at / windowS) * windowS;
    return buckets.findIndex((b) => Date.parse(b) / 1000 === start);
  }

  function shareLine(series, n, x, className, label) {
    const group = svg("g", {class: className + "-series"});
    const points = [];
    for (let i = 0; i < n; i++) {
      const mentions = series.mentions[i];
      if (!mentions) continue;
      const share = series.negative[i] / mentions;
      const y = SHARE_TOP + (1 - share) * SHARE_H;
      points.push(x(i).toFixed(1) + "," + y.toFixed(1));
      if (className === "share") {
        group.appendChild(tip(svg("circle", {class: "share-point", cx: x(i).toFixed(1), cy: y.toFixed(1), r: 3}),
                              label(i) + ": " + series.negative[i] + " negative of " + mentions + " (" +
                              percent(share) + ")"));
      }
    }
    group.insertBefore(svg("polyline", {class: className, points: points.join(" ")}), group.firstChild);
    return group;
  }

  function axes(n, x, buckets, maxMentions) {
    const nodes = [];
    [0, 0.5, 1].forEach((share) => {
      const y = SHARE_TOP + (1 - share) * SHARE_H;
      nodes.push(svg("line", {class: share ? "grid" : "axis", x1: LEFT, x2: W - RIGHT, y1: y, y2: y}));
      nodes.push(svg("text", {class: "label", x: LEFT - 6, y: y + 4, "text-anchor": "end"}, percent(share)));
    });
    const base = VOLUME_TOP + VOLUME_H;
    nodes.push(svg("line", {class: "axis", x1: LEFT, x2: W - RIGHT, y1: base, y2: base}));
    nodes.push(svg("text", {class: "label", x: LEFT - 6, y: VOLUME_TOP + 8, "text-anchor": "end"}, maxMentions));
    nodes.push(svg("text", {class: "label", x: LEFT - 6, y: base, "text-anchor": "end"}, "0"));
    const every = Math.max(1, Math.ceil(n / 6));  // at most about six time labels
    const marks = [];
    for (let i = 0; i < n; i += every) marks.push(i);
    if (marks[marks.length - 1] !== n - 1 && n - 1 - marks[marks.length - 1] >= every / 2) marks.push(n - 1);
    marks.forEach((i) => nodes.push(svg("text", {class: "label", x: x(i), y: LABEL_Y, "text-anchor": "middle"},
                                         shortTime(buckets[i]))));
    return nodes;
  }

  function drawTimeline(timeline, entity) {
    const buckets = timeline.buckets || [];
    const series = (timeline.series || {})[entity];
    const n = buckets.length;
    chart.dataset.entity = entity;
    chart.dataset.buckets = String(n);
    if (!series || !n || !series.mentions.some((m) => m > 0)) {
      chart.replaceChildren(svg("text", {class: "empty", x: W / 2, y: 150, "text-anchor": "middle"},
                                "No mentions of " + entity + " yet"));
      return;
    }
    const slot = (W - LEFT - RIGHT) / n;
    const x = (i) => LEFT + (i + 0.5) * slot;
    const label = (i) => shortTime(buckets[i]);
    const maxMentions = Math.max(1, ...series.mentions);
    const nodes = axes(n, x, buckets, maxMentions);
    const bars = svg("g", {class: "bars"});
    series.mentions.forEach((mentions, i) => {
      const h = (mentions / maxMentions) * VOLUME_H;
      const width = Math.max(1, slot * 0.7);
      bars.appendChild(tip(svg("rect", {class: "bar", x: (x(i) - width / 2).toFixed(1), width: width.toFixed(1),
                                        y: (VOLUME_TOP + VOLUME_H - h).toFixed(1), height: h.toFixed(1)}),
                           label(i) + ": " + mentions + " mentions"));
    });
    nodes.push(bars);
    const market = (timeline.series || {})[MARKET];
    if (market && entity !== MARKET) nodes.push(shareLine(market, n, x, "market", label));
    nodes.push(shareLine(series, n, x, "share", label));
    alertsNow.filter((a) => a.entity === entity).forEach((alert) => {
      const i = bucketOf(alert, buckets, timeline.window_s);
      if (i < 0) return;
      nodes.push(tip(svg("line", {class: "alert-mark", x1: x(i), x2: x(i), y1: SHARE_TOP, y2: VOLUME_TOP + VOLUME_H}),
                     alert.detector + " alert at " + alert.time));
    });
    chart.replaceChildren(...nodes);
  }

  async function refreshTimeline() {
    const entity = select.value;
    if (!entity) return;
    const timeline = await getJSON("/api/timeline?entity=" + encodeURIComponent(entity));
    if (select.value !== entity) return;  // the selection changed while this was on its way
    if (!changed("timeline", [entity, timeline, alertsNow])) return;
    drawTimeline(timeline, entity);
  }

  // === alerts and items ===

  function alertStatistic(alert) {
    if (alert.detector === "negative-volume") {
      return alert.count + " negative mentions vs " + alert.expected + " expected in the window from " +
        alert.window_start + " (p = " + alert.p_value + " < " + Number(alert.alpha).toPrecision(3) + ")";
    }
    return "CUSUM statistic " + alert.statistic + " vs threshold " + alert.threshold + " \u00b7 base share " +
      percent(alert.p0) + ", watching for " + percent(alert.p1) + " \u00b7 " + alert.negatives_in_run +
      " negative of " + alert.mentions_in_run + " mentions since " + alert.run_start;
  }

  function evidenceList(rows) {
    const list = el("ol", "evidence");
    (rows || []).forEach((row) => {
      const li = el("li", "evidence-item");
      li.append(el("span", "score", Number(row.negative).toFixed(3)), el("span", "text", row.text),
                el("span", "meta", " \u2014 " + [row.source, row.time, row.provenance].filter(Boolean).join(" \u00b7 ")));
      list.appendChild(li);
    });
    return list;
  }

  function renderAlerts(alerts) {
    alertsNow = alerts;
    if (!changed("alerts", alerts)) return;
    if (!alerts.length) {
      alertList.replaceChildren(el("p", "none", "No alerts."));
      return;
    }
    alertList.replaceChildren(...alerts.map((alert) => {
      const node = el("article", "alert");
      node.dataset.entity = alert.entity;
      node.dataset.detector = alert.detector;
      node.dataset.alertId = alert.id;
      node.append(el("p", "alert-head", alert.entity + " \u00b7 " + alert.detector + " \u00b7 " + alert.time),
                  el("p", "alert-stat", alertStatistic(alert)), evidenceList(alert.evidence));
      return node;
    }));
  }

  function renderItems(items) {
    if (!changed("items", items)) return;
    if (!items.length) {
      itemList.replaceChildren(el("p", "none", "No negative items yet."));
      return;
    }
    itemList.replaceChildren(...items.map((item) => {
      const node = el("article", "item");
      node.dataset.id = item.id;
      node.dataset.entities = (item.entities || []).join(",");
      node.append(el("p", "meta", [item.time, (item.entities || []).join(", "), "negative " +
                                   Number(item.negative).toFixed(3), item.source].join(" \u00b7 ")),
                  el("p", "text", item.text));
      return node;
    }));
  }

  // === status and polling ===

  function renderStatus(summary) {
    const stream = summary.stream || {};
    const counts = summary.counts || {};
    const dropped = Object.values(stream.dropped || {}).reduce((a, b) => a + b, 0);
    const parts = [];
    if (summary.stream) {
      parts.push("stream " + (stream.running ? "running" : "stopped") + ": read " + (stream.read || 0) + ", kept " +
                 (stream.kept || 0) + ", dropped " + dropped + ", out of order " + (stream.out_of_order || 0));
    }
    parts.push(counts.items + " items, " + counts.mentions + " mentions, " + counts.unmatched + " unmatched, " +
               counts.alerts + " alerts");
    parts.push("updated " + new Date().toISOString().slice(11, 19) + " UTC");
    statusLine.classList.remove("error");
    statusLine.textContent = parts.join(" \u00b7 ");
  }

  function showError(err) {
    statusLine.classList.add("error");
    statusLine.textContent = "Not updated: " + (err && err.message ? err.message : String(err)) + " (retrying)";
  }

  async function poll() {
    try {
      const [summary, alerts, items] = await Promise.all([
        getJSON("/api/summary"), getJSON("/api/alerts?limit=100"), getJSON("/api/items?limit=50")]);
      renderEntities(summary.entities || {});
      renderAlerts(alerts.alerts || []);
      renderItems(items.items || []);
      await refreshTimeline();
      renderStatus(summary);
    } catch (err) {
      showError(err);
    } finally {
      timer = setTimeout(poll, POLL_MS);
    }
  }

  select.addEventListener("change", () => choose(select.value));
  poll();
  window.addEventListener("beforeunload", () => clearTimeout(timer));
})();
