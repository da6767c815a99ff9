/* The IOC page: map, alert list per street and a live chart, kept live from /v1/stream.
   One truth: every colour and level shown is the alert engine's verdict as /v1/sensors and
   /v1/streets give it (never a raw reading), with the latest depth beside it.
   No framework and no words here: every user-facing text comes from /static/i18n/{lang}.json
   (Vietnamese first), so the page loads from the API alone, offline, under a strict CSP. */
"use strict";
(function () {
  const ZONE = "Asia/Ho_Chi_Minh";
  const KEY_STORAGE = "floodwatch.apiKey";
  const LANG_STORAGE = "floodwatch.lang";
  const LANGS = ["vi", "en"];
  const LOCALES = { vi: "vi-VN", en: "en-GB" };
  const CHART_WINDOW_MS = 3600 * 1000; // the chart shows the last hour of raw readings
  const STREETS_REFRESH_MS = 250; // /v1/streets is re-read at most this often
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const levelColor = (level) => color(`--level${Math.max(0, Math.min(level, 4))}`);

  function readConfig() {
    try {
      return JSON.parse(document.getElementById("config").textContent);
    } catch (e) {
      return {};
    }
  }
  const config = readConfig();
  // The longest silence a live feed has (heartbeats) before the page calls its data old.
  const FEED_QUIET_MS = ((config.heartbeatS || 15) * 2 + 5) * 1000;

  let apiKey = localStorage.getItem(KEY_STORAGE) || "";
  let role = null; // "viewer" | "operator" | null (not known yet, or no key)
  let who = "";
  let lang = LANGS.includes(localStorage.getItem(LANG_STORAGE)) ?
    localStorage.getItem(LANG_STORAGE) : "vi";
  let catalogue = {};
  const missing = new Set();
  window.floodwatchMissingKeys = missing; // read by the tests: must stay empty

  const sensors = new Map(); // id -> {props, marker}
  const streets = new Map(); // registry name -> {props, line, label}
  const alerts = new Map(); // alert_id -> alert (active ones)
  const notifications = new Map(); // alert_id -> the notifier's record (who was told, when)
  let selected = null;
  let userSelected = false;
  let chartPoints = [];
  let lastEventId = null;
  let streamAbort = null;
  let streamState = "idle";
  let lastHeard = 0;
  let notice = null; // {key, params} shown above the alert list

  // --- words ------------------------------------------------------------------------------
  function t(key, params) {
    let text = catalogue[key];
    if (text === undefined) {
      missing.add(key);
      text = key;
    }
    if (params) {
      text = text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
    }
    return text;
  }
  const locale = () => LOCALES[lang];
  const num = (value, digits) => new Intl.NumberFormat(locale(), {
    maximumFractionDigits: digits, minimumFractionDigits: digits,
  }).format(value);
  const hhmm = (iso) => (iso ? new Intl.DateTimeFormat(locale(), {
    timeZone: ZONE, hour: "2-digit", minute: "2-digit", hour12: false,
  }).format(new Date(iso)) : "–");
  // River stage: stored in cm like every depth, shown in metres (two decimals) as gauges read.
  const stageText = (cm) => num(cm / 100, 2);
  const ladderOf = (props) => (props.kind === "tide" ? "tide" : "street");
  const levelText = (ladder, name) => (name ? t(`level.${ladder}.${name}`) : "–");
  const kindText = (kind) => t(`kind.${["flood", "rising", "stale", "battery_low", "fault"]
    .includes(kind) ? kind : "unknown"}`);
  const stateText = (state) => t(`state.${state}`);
  const placeName = (props) => (lang === "en" ? props.name_en || props.name : props.name);
  function streetName(name) {
    const entry = streets.get(name);
    return entry ? placeName(entry.props) : name;
  }

  async function loadCatalogue(wanted) {
    const response = await fetch(`/static/i18n/${wanted}.json`, { cache: "no-cache" });
    catalogue = await response.json();
    lang = wanted;
    document.documentElement.lang = wanted;
  }

  function applyStaticTexts() {
    document.title = t("app.title");
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-label]")) {
      el.setAttribute("aria-label", t(el.dataset.i18nLabel));
      if (el.tagName === "BUTTON") el.title = t(el.dataset.i18nLabel);
    }
  }

  function rerenderAll() {
    applyStaticTexts();
    renderLegend();
    for (const entry of streets.values()) styleStreet(entry);
    for (const entry of sensors.values()) styleSensor(entry);
    renderAlerts();
    renderDetail();
    renderHistory();
    drawChart();
    renderWho();
    renderStatus();
    renderNotice();
    tick();
  }

  // --- API access -------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (apiKey) h.Authorization = "Bearer " + apiKey;
    return h;
  }

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = headers(opts.headers);
    let response;
    try {
      response = await fetch(path, opts);
    } catch (e) {
      throw new ApiError(0, String(e.message || e));
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        if (typeof body.detail === "string") detail = body.detail;
      } catch (e) { /* not JSON */ }
      throw new ApiError(response.status, detail);
    }
    return response;
  }

  // Exactly why an action failed, in the operator's language; `own` words an action's own
  // refusals (status -> key), e.g. a 404 when ending a maintenance that already ended.
  function failure(error, own) {
    const status = error instanceof ApiError ? error.status : 0;
    if (own && own[status]) return { key: own[status] };
    if (status === 0) return { key: "error.network" };
    if (status === 401) return { key: apiKey ? "error.wrong_key" : "error.no_key" };
    if (status === 403) return { key: "error.viewer_key" };
    if (status === 409) return { key: "error.already" };
    if (status === 404) return { key: "error.not_found" };
    if (status === 503) return { key: "error.unavailable", params: { detail: error.message } };
    return { key: "error.other", params: { status, detail: error.message } };
  }

  // --- map --------------------------------------------------------------------------------
  const map = L.map("map", {
    zoomControl: false, attributionControl: Boolean(config.tileUrl || config.wmsUrl),
    zoomSnap: 0.25,
  }).setView([10.806, 106.733], 16);
  if (config.tileUrl) {
    L.tileLayer(config.tileUrl, { maxZoom: 19, attribution: config.tileAttribution || "" })
      .addTo(map);
  }
  if (config.wmsUrl) {
    L.tileLayer.wms(config.wmsUrl, {
      layers: config.wmsLayers, format: "image/png", transparent: true, maxZoom: 19,
    }).addTo(map);
  }
  // Phones pinch to zoom; a wall screen gets buttons, away from the labels.
  if (window.innerWidth >= 600) L.control.zoom({ position: "topright" }).addTo(map);
  map.createPane("context").style.zIndex = 350; // under the streets and sensors
  const contextLayer = L.layerGroup().addTo(map);
  let wardBounds = null; // the view fits the ward (its streets, with the river beside them)
  const streetLayer = L.layerGroup().addTo(map);
  const sensorLayer = L.layerGroup().addTo(map);
  const labelLayer = L.layerGroup().addTo(map);

  async function loadOverlays() {
    // Approximate river, ward and streets drawn by the project (see the file's "about").
    try {
      const response = await fetch("/static/overlays/an-khanh.geojson");
      const overlay = await response.json();
      const layer = L.geoJSON(overlay, {
        pane: "context",
        interactive: false,
        style: (f) => ({
          river: { className: "ctx-river", stroke: true, weight: 1, fill: true, fillOpacity: 1 },
          ward: { className: "ctx-ward", weight: 2, fill: true, fillOpacity: 1, dashArray: "8 6" },
          street: { className: "ctx-street", weight: 16, lineCap: "round" },
        })[f.properties.role] || {},
      }).addTo(contextLayer);
      layer.eachLayer((item) => {
        if (item.feature.properties.role === "ward") wardBounds = item.getBounds();
      });
    } catch (e) { /* the map still works without its context */ }
  }

  const legend = L.control({ position: "bottomright" });
  legend.onAdd = () => {
    const div = L.DomUtil.create("div", "legend");
    div.id = "legend";
    return div;
  };
  legend.addTo(map);

  function renderLegend() {
    // On the map on a wall screen; below the chart on a phone (app.css picks one).
    for (const id of ["legend", "legend-card"]) fillLegend(document.getElementById(id));
  }

  function fillLegend(div) {
    const title = document.createElement("h2");
    title.textContent = t("legend.title");
    const list = document.createElement("ul");
    const names = ["normal", "flooded", "hazard", "impassable", "closed"];
    const limits = [10, 20, 30, 50];
    names.forEach((name, level) => {
      const li = document.createElement("li");
      const swatch = document.createElement("i");
      swatch.className = `swatch level-${level}`;
      const text = level === 0 ?
        t("legend.normal", { level: levelText("street", name), cm: limits[0] }) :
        t("legend.threshold", { level: levelText("street", name), cm: limits[level - 1] });
      li.append(swatch, text);
      list.append(li);
    });
    const stale = document.createElement("li");
    const swatch = document.createElement("i");
    swatch.className = "swatch stale";
    stale.append(swatch, t("legend.stale"));
    const maint = document.createElement("li");
    const grey = document.createElement("i");
    grey.className = "swatch maint";
    maint.append(grey, t("legend.maintenance"));
    list.append(stale, maint);
    const note = document.createElement("p");
    note.className = "legend-note";
    note.textContent = t("legend.note");
    div.replaceChildren(title, list, note);
  }

  function sensorTooltip(p) {
    const depth = p.level_cm === null ? t("detail.no_reading") :
      t("row.depth", { depth: num(p.level_cm, 1) });
    const text = `${placeName(p)} (${p.id}) · ${depth} · ${levelText(ladderOf(p), p.level_name)}`;
    return p.maintenance ? `${text} · ${maintText(p.maintenance)}` : text;
  }

  function upsertSensor(p) {
    let entry = sensors.get(p.id);
    if (!entry) {
      const latlng = [p.lat, p.lon];
      const tide = p.kind === "tide";
      const marker = L.circleMarker(latlng, {
        radius: (tide ? 13 : 10) * (window.innerWidth < 600 ? 0.75 : 1),
        weight: tide ? 4 : 2,
        color: tide ? "#5fb3ff" : "#0f151b",
        fillOpacity: 0.95,
        className: `sensor sensor-${p.id}`,
      }).addTo(sensorLayer);
      marker.bindTooltip("", { direction: "top", offset: [0, -8] });
      marker.on("click", () => {
        marker.closeTooltip();
        selectSensor(p.id, true);
      });
      entry = { props: p, marker, latlng };
      sensors.set(p.id, entry);
      const el = marker.getElement();
      if (el) el.setAttribute("data-sensor", p.id);
      if (tide) {
        entry.label = L.tooltip({
          permanent: true, direction: "right", offset: [16, 0], className: "map-label gauge-label",
        }).setLatLng(latlng).addTo(labelLayer);
      }
    }
    entry.props = p;
    styleSensor(entry);
    if (selected === p.id) renderDetail();
  }

  function styleSensor(entry) {
    const p = entry.props;
    const known = p.level !== null && p.level !== undefined;
    // Under maintenance: grey (its readings are still judged, but it tells nobody).
    entry.marker.setStyle({
      fillColor: p.maintenance ? color("--maint") :
        !known || p.stale ? color("--stale") : levelColor(p.level),
      dashArray: p.stale || p.maintenance ? "3 3" : null,
    });
    entry.marker.setTooltipContent(sensorTooltip(p));
    const el = entry.marker.getElement();
    if (el) {
      el.setAttribute("data-level", known ? String(p.level) : "");
      el.setAttribute("data-stale", String(p.stale));
      el.setAttribute("data-maintenance", String(Boolean(p.maintenance)));
    }
    if (p.kind === "tide") {
      const text = p.level_cm === null ? t("map.gauge_nodata", { name: placeName(p) }) :
        t("map.gauge", {
          name: placeName(p), stage: stageText(p.level_cm), level: levelText("tide", p.level_name),
        });
      entry.label.setContent(text);
      if (entry.label.getElement()) entry.label.getElement().dataset.level = String(p.level || 0);
      showTide(p);
      placeGaugeHint();
    }
  }

  // The Phu An gauge lies south-west of the ward: the view fits the streets, so when the gauge
  // is outside it a hint sits at the nearest edge, pointing at it.
  let gaugeHint = null;
  function placeGaugeHint() {
    const gauge = [...sensors.values()].find((s) => s.props.kind === "tide");
    if (!gauge) return;
    const bounds = map.getBounds();
    if (bounds.contains(gauge.latlng)) {
      if (gaugeHint) gaugeHint.remove();
      gaugeHint = null;
      return;
    }
    const pad = bounds.pad(-0.06);
    const lat = Math.min(Math.max(gauge.latlng[0], pad.getSouth()), pad.getNorth());
    const lon = Math.min(Math.max(gauge.latlng[1], pad.getWest()), pad.getEast());
    const p = gauge.props;
    const text = p.level_cm === null ? t("map.offscreen_nodata", { name: placeName(p) }) :
      t("map.offscreen", { name: placeName(p), stage: stageText(p.level_cm) });
    if (!gaugeHint) {
      gaugeHint = L.tooltip({ permanent: true, direction: "right", className: "map-label gauge-hint" })
        .setLatLng([lat, lon]).addTo(labelLayer);
    }
    gaugeHint.setLatLng([lat, lon]).setContent(text);
  }
  map.on("moveend", placeGaugeHint);

  function labelAnchor(latlngs) {
    // East-west streets are named past their east end, north-south ones above their north
    // end, so a label never sits on a marker (on a phone the label takes two lines).
    const lats = latlngs.map((p) => p[0]), lons = latlngs.map((p) => p[1]);
    const wide = Math.max(...lons) - Math.min(...lons) >= Math.max(...lats) - Math.min(...lats);
    if (wide) {
      const east = latlngs.reduce((a, b) => (b[1] > a[1] ? b : a));
      return { at: east, direction: "right", offset: [14, 0] };
    }
    const north = latlngs.reduce((a, b) => (b[0] > a[0] ? b : a));
    return { at: north, direction: "top", offset: [0, -14] };
  }

  function upsertStreet(feature) {
    const p = feature.properties;
    let entry = streets.get(p.name);
    if (!entry) {
      const latlngs = feature.geometry.coordinates.map(([lon, lat]) => [lat, lon]);
      const line = L.polyline(latlngs, { weight: window.innerWidth < 600 ? 7 : 11, opacity: 0.9, className: "street" })
        .addTo(streetLayer);
      line.on("click", () => {
        if (entry.props.worst_sensor) selectSensor(entry.props.worst_sensor, true);
      });
      const anchor = labelAnchor(latlngs);
      const label = L.tooltip({
        permanent: true, direction: anchor.direction, offset: anchor.offset, className: "map-label",
      }).setLatLng(anchor.at).addTo(labelLayer);
      entry = { props: p, line, label, latlngs };
      streets.set(p.name, entry);
      const el = line.getElement();
      if (el) el.setAttribute("data-street", p.name);
    }
    entry.props = p;
    styleStreet(entry);
  }

  function styleStreet(entry) {
    const p = entry.props;
    const known = p.level !== null && p.level !== undefined;
    const maint = streetMaintenance(p.name);
    entry.line.setStyle({
      color: maint.all ? color("--maint") : known ? levelColor(p.level) : color("--stale"),
      dashArray: maint.all ? "14 10" : null,
    });
    const path = entry.line.getElement();
    if (path) {
      path.setAttribute("data-level", known ? String(p.level) : "");
      path.setAttribute("data-maintenance", String(maint.all));
    }
    // "Quốc Hương 52 cm · Cấm lưu thông": the name, then the depth and the engine's level.
    const content = el("span", "label-text");
    content.append(el("span", "label-name", placeName(p)), " ", el("span", "label-state",
      p.level_cm === null ? t("map.label_nodata") :
        t("map.label_state", { depth: num(p.level_cm, 0), level: levelText("street", p.level_name) })));
    if (maint.all) {
      // The phone's narrow map shows only "bảo trì"; the row below says until when.
      const flag = el("span", "label-maint", t("maint.label"));
      flag.append(el("span", "label-until", ` ${t("maint.label_until", { until: whenText(maint.record.until) })}`));
      content.append(" ", flag);
    }
    entry.label.setContent(content);
    const labelEl = entry.label.getElement();
    if (labelEl) {
      labelEl.dataset.level = known ? String(p.level) : "";
      labelEl.dataset.street = p.name;
      labelEl.dataset.maintenance = String(maint.all);
    }
  }

  function showTide(p) {
    document.getElementById("tide").hidden = false;
    document.getElementById("tide-title").textContent = t("tide.title", { name: placeName(p) });
    document.getElementById("tide-stage").textContent =
      p.level_cm === null ? t("detail.no_reading") : t("tide.stage", { stage: stageText(p.level_cm) });
    const badge = document.getElementById("tide-level");
    badge.textContent = levelText("tide", p.level_name);
    badge.dataset.level = String(p.level || 0);
    badge.hidden = p.level === null || p.level === undefined;
    const note = verdictText(p);
    document.getElementById("tide-time").textContent =
      [p.time ? hhmm(p.time) : "", note].filter(Boolean).join(" · ");
  }

  // --- the alert list ---------------------------------------------------------------------
  function verdictText(p) {
    if (p.kind === "tide") return tideVerdictText(p);
    const depth = p.level_cm === null || p.level_cm === undefined ? "–" : num(p.level_cm, 1);
    switch (p.verdict_note) {
      case "draining":
        return p.hold_until ? t("verdict.draining", { depth, time: hhmm(p.hold_until) }) :
          t("verdict.draining_open", { depth });
      case "unconfirmed": return t("verdict.unconfirmed", { depth });
      case "stale": return t("verdict.stale", { depth, time: hhmm(p.time) });
      case "fault": return t("verdict.fault", { depth });
      default: return "";
    }
  }

  // A river gauge's stage is in metres and its water falls rather than drains off a road.
  function tideVerdictText(p) {
    const stage = p.level_cm === null || p.level_cm === undefined ? "–" : stageText(p.level_cm);
    switch (p.verdict_note) {
      case "draining":
        return p.hold_until ? t("verdict.tide_falling", { time: hhmm(p.hold_until) }) :
          t("verdict.tide_falling_open");
      case "unconfirmed": return t("verdict.tide_unconfirmed", { stage });
      case "stale": return t("verdict.tide_stale", { stage, time: hhmm(p.time) });
      case "fault": return t("verdict.tide_fault", { stage });
      default: return "";
    }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- maintenance and notifications on the rows -------------------------------------------
  // A time today as 14:02; another day with its date, so "until" is never ambiguous.
  function whenText(iso) {
    if (!iso) return "–";
    const day = (d) => new Intl.DateTimeFormat("en-CA", { timeZone: ZONE }).format(d);
    const at = new Date(iso);
    if (day(at) === day(new Date())) return hhmm(iso);
    // Day/month as both languages write it here (06/12), whatever the locale's separator.
    const parts = new Intl.DateTimeFormat("en-GB", { timeZone: ZONE, day: "2-digit", month: "2-digit" })
      .formatToParts(at);
    const part = (type) => (parts.find((p) => p.type === type) || {}).value;
    return t("maint.when_day", { time: hhmm(iso), date: `${part("day")}/${part("month")}` });
  }

  function maintText(m) {
    return t("maint.text", { reason: m.reason, who: m.who, until: whenText(m.until) });
  }

  // A street is under maintenance when every sensor on it is (how the API puts a street
  // under); `some` lists the sensors under their own maintenance.
  function streetMaintenance(name) {
    const members = [...sensors.values()].map((s) => s.props).filter((p) => p.street === name);
    const under = members.filter((p) => p.maintenance);
    const all = members.length > 0 && under.length === members.length;
    return { all, record: all ? under[0].maintenance : null, some: all ? [] : under };
  }

  function maintLine(text) {
    const line = el("div", "maint-line");
    line.append(el("span", "maint-flag", t("maint.silenced")), " ", el("span", "maint-why", text));
    return line;
  }

  // Phone numbers and e-mail addresses are shown in part only: the page is on a wall screen.
  function mask(text) {
    if (text === null || text === undefined) return "";
    return String(text)
      .replace(/([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)/g,
        (m, first, domain) => `${first}•••@${domain}`)
      .replace(/\+?\d[\d .-]{6,}\d/g, (m) => {
        const digits = m.replace(/\D/g, "");
        return digits.length < 8 ? m : `${digits.slice(0, 3)}${"•".repeat(digits.length - 5)}${digits.slice(-2)}`;
      });
  }

  const STATUSES = ["delivered", "pending", "held", "dead", "suppressed"];
  const statusText = (status) => t(`notify.status.${STATUSES.includes(status) ? status : "pending"}`);

  // "Đã báo 3 người · 14:02", what waits, what failed, and the next escalation step.
  function notifySummary(alertIds) {
    const records = alertIds.map((id) => notifications.get(id)).filter(Boolean);
    const items = records.flatMap((r) => r.notifications || []);
    const parts = [];
    let bad = false;
    const delivered = items.filter((i) => i.status === "delivered");
    if (delivered.length) {
      const people = new Set(delivered.map((i) => i.recipient)).size;
      const last = delivered.map((i) => i.delivered_at || i.queued_at).sort().pop();
      parts.push(t(people === 1 ? "notify.told_one" : "notify.told", { count: people, time: hhmm(last) }));
    }
    const count = (statuses) => items.filter((i) => statuses.includes(i.status)).length;
    const waiting = count(["pending", "held"]);
    if (waiting) parts.push(t("notify.waiting", { count: waiting }));
    const dead = count(["dead"]);
    if (dead) {
      parts.push(t("notify.failed", { count: dead }));
      bad = true;
    }
    const suppressed = count(["suppressed"]);
    if (suppressed) parts.push(t("notify.suppressed", { count: suppressed }));
    const next = records.map((r) => r.escalation).filter((e) => e && e.waiting && e.next_at)
      .sort((a, b) => String(a.next_at).localeCompare(String(b.next_at)))[0];
    if (next) parts.push(t("notify.next", { tier: next.next_tier, time: hhmm(next.next_at) }));
    if (!parts.length) parts.push(t("notify.none"));
    return { text: parts.join(" · "), bad, shown: items.length > 0 || Boolean(next) };
  }

  function notifyLine(target, alertIds) {
    const line = el("div", "notify-line");
    const summary = notifySummary(alertIds);
    const text = el("span", summary.bad ? "notify-text bad" : "notify-text", summary.text);
    const button = el("button", "history", t("notify.open"));
    button.type = "button";
    button.addEventListener("click", () => openHistory(target));
    // Nothing to list (nobody told, nothing waiting): the summary alone says so.
    line.append(text);
    if (summary.shown) line.append(button);
    return line;
  }

  function ackButton(onClick) {
    const button = el("button", "ack", t("action.ack"));
    button.type = "button";
    button.addEventListener("click", onClick);
    return button;
  }

  function floodRow(p) {
    // One row per street: level, depth, since when, why the reading differs, the history, and
    // the acknowledgement (one action for every open flood alert of the street).
    const li = el("li", "flood-row");
    li.dataset.street = p.name;
    li.dataset.level = String(p.level || 0);
    li.dataset.state = p.state || "";
    const head = el("div", "row-head");
    const title = el("span", "title");
    title.append(el("span", "what", placeName(p)), " ",
      el("span", `badge level-${Math.min(p.level || 0, 4)}`, levelText("street", p.level_name)));
    head.append(title,
      el("span", "depth", p.level_cm === null ? "–" : t("row.depth", { depth: num(p.level_cm, 0) })));
    if (p.unacked > 0 && role === "operator") {
      head.append(ackButton(() => openAck({ street: p.name, count: p.unacked })));
    }
    li.append(head);
    const meta = el("div", "meta");
    const facts = [];
    if (p.since) facts.push(t("row.since", { time: hhmm(p.since) }));
    if (p.peak_cm !== null && p.peak_cm !== undefined) {
      facts.push(t("row.peak", { depth: num(p.peak_cm, 0), time: hhmm(p.peak_time) }));
    }
    meta.append(facts.join(" · "));
    const mine = p.alerts.map((id) => alerts.get(id)).filter(Boolean);
    let ackText = null;
    if (p.unacked > 0) {
      // The count is in the dialog; here only the state, so the row stays one line.
      ackText = el("span", "ack-state unacked", stateText("active_unack"));
    } else if (p.state === "active_ack") {
      const acked = mine.find((a) => a.acked_by) || {};
      ackText = el("span", "ack-state", acked.note ?
        t("row.acked_note", { who: acked.acked_by, note: acked.note }) :
        t("row.acked", { who: acked.acked_by || "–" }));
    }
    if (ackText) meta.append(facts.length ? " · " : "", ackText);
    li.append(meta);
    const note = verdictText(p);
    if (note) li.append(el("div", "verdict", note));
    if (p.history && p.history.length > 1) {
      const steps = p.history.map((h) => t("row.step", {
        level: levelText("street", h.level_name), time: hhmm(h.at),
      })).join(" → ");
      li.append(el("div", "meta history", t("row.history", { steps })));
    }
    const maint = streetMaintenance(p.name);
    if (maint.all) {
      li.dataset.maintenance = "true";
      li.append(maintLine(maintText(maint.record)));
    }
    for (const s of maint.some) {
      li.append(maintLine(t("maint.sensor_text", { sensor: s.id, text: maintText(s.maintenance) })));
    }
    if (p.alerts && p.alerts.length) li.append(notifyLine({ street: p.name }, p.alerts));
    li.addEventListener("click", (event) => {
      if (event.target.closest("button")) return;
      if (p.worst_sensor) selectSensor(p.worst_sensor, true);
    });
    return li;
  }

  function otherRow(a) {
    const li = el("li", "other-row");
    li.dataset.alertId = a.alert_id;
    li.dataset.kind = a.kind;
    li.dataset.state = a.state || "";
    const sensor = sensors.get(a.sensor);
    const name = sensor ? placeName(sensor.props) : a.sensor;
    const head = el("div", "row-head");
    head.append(el("span", `badge kind-${a.kind}`, kindText(a.kind)), el("span", "what", a.sensor));
    li.append(head);
    // The place in full on its own line (wrapping if it must), never cut off with "…".
    const place = el("span", "place", name);
    const payload = a.payload || {};
    const facts = [];
    if (payload.raised_at) facts.push(t("row.since", { time: hhmm(payload.raised_at) }));
    if (typeof payload.battery_v === "number") {
      facts.push(t("row.battery", { volts: num(payload.battery_v, 2) }));
    }
    if (typeof payload.rise_cm === "number") facts.push(t("row.rise", { rise: num(payload.rise_cm, 0) }));
    if (["out_of_range", "obstructed", "stuck"].includes(payload.detail)) {
      facts.push(t(`row.detail.${payload.detail}`));
    }
    if (a.state !== "active_unack") facts.push(stateText(a.state));
    li.append(el("span", "meta", facts.join(" · ")));
    if (a.state === "active_unack" && role === "operator") {
      const foot = el("div", "row-foot");
      foot.append(ackButton(() => openAck({
        alert: a.alert_id, what: t("row.sensor", { sensor: `${kindText(a.kind)} · ${a.sensor}`, name }),
      })));
      li.append(foot);
    }
    li.append(place);
    if (sensor && sensor.props.maintenance) {
      li.dataset.maintenance = "true";
      const line = maintLine(maintText(sensor.props.maintenance));
      line.classList.add("wide");
      li.append(line);
    }
    const notify = notifyLine({ alert: a.alert_id }, [a.alert_id]);
    notify.classList.add("wide");
    li.append(notify);
    li.addEventListener("click", (event) => {
      if (!event.target.closest("button")) selectSensor(a.sensor, true);
    });
    return li;
  }

  function renderAlerts() {
    const flooded = [...streets.values()].map((s) => s.props)
      .filter((p) => (p.level || 0) > 0 || (p.alerts && p.alerts.length))
      .sort((a, b) => (b.level - a.level) || ((b.level_cm || 0) - (a.level_cm || 0)));
    document.getElementById("floods").replaceChildren(...flooded.map(floodRow));
    document.getElementById("floods-empty").hidden = flooded.length > 0;
    document.getElementById("flood-count").textContent = flooded.length ? `(${flooded.length})` : "";
    const order = { fault: 0, stale: 1, rising: 2, battery_low: 3 };
    const others = [...alerts.values()].filter((a) => a.kind !== "flood" && a.active)
      .sort((a, b) => ((order[a.kind] ?? 9) - (order[b.kind] ?? 9)) ||
        String(a.sensor).localeCompare(String(b.sensor)));
    document.getElementById("others").replaceChildren(...others.map(otherRow));
    document.getElementById("others-empty").hidden = others.length > 0;
    document.getElementById("other-count").textContent = others.length ? `(${others.length})` : "";
  }

  function replaceSensorAlerts(sensorId, list) {
    for (const [id, a] of alerts) if (a.sensor === sensorId) alerts.delete(id);
    for (const a of list) if (a.active) alerts.set(a.alert_id, a);
  }

  let noticeTimer = null;
  function setNotice(key, params, kind) {
    notice = key ? { key, params, kind } : null;
    renderNotice();
    // A confirmation fades after a while; an error stays until the next action.
    clearTimeout(noticeTimer);
    if (kind === "ok") noticeTimer = setTimeout(() => setNotice(null), 8000);
  }
  function renderNotice() {
    const box = document.getElementById("notice");
    box.hidden = !notice;
    box.textContent = notice ? t(notice.key, notice.params) : "";
    box.dataset.kind = notice ? notice.kind || "error" : "";
  }

  // --- acknowledging ----------------------------------------------------------------------
  const ackDialog = document.getElementById("ack-dialog");
  let ackTarget = null;

  function openAck(target) {
    ackTarget = target;
    document.getElementById("ack-title").textContent = target.street ?
      t("ack.title_street", { street: streetName(target.street) }) :
      t("ack.title_alert", { what: target.what });
    document.getElementById("ack-body").textContent = target.street ?
      t("ack.body_street", { count: target.count }) : t("ack.body_alert");
    document.getElementById("ack-error").textContent = "";
    document.getElementById("ack-note").value = "";
    document.getElementById("ack-confirm").disabled = false;
    if (!ackDialog.open) ackDialog.showModal();
    document.getElementById("ack-note").focus();
  }

  async function sendAck(event) {
    event.preventDefault();
    if (!ackTarget) return;
    const target = ackTarget;
    const note = document.getElementById("ack-note").value.trim();
    const confirm = document.getElementById("ack-confirm");
    confirm.disabled = true;
    document.getElementById("ack-error").textContent = t("ack.sending");
    const path = target.street ?
      `/v1/streets/${encodeURIComponent(target.street)}/acknowledge` :
      `/v1/alerts/${encodeURIComponent(target.alert)}/ack`;
    try {
      const response = await api(path, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ note }),
      });
      const body = await response.json();
      for (const a of body.acknowledged || [body]) {
        if (alerts.has(a.alert_id)) alerts.set(a.alert_id, Object.assign({}, alerts.get(a.alert_id), a));
      }
      ackDialog.close();
      ackTarget = null;
      setNotice("ack.done", { what: target.street ? streetName(target.street) : target.what }, "ok");
      scheduleStreets();
    } catch (e) {
      const why = failure(e);
      document.getElementById("ack-error").textContent = t(why.key, why.params);
      confirm.disabled = false;
    }
  }
  document.getElementById("ack-form").addEventListener("submit", sendAck);
  document.getElementById("ack-cancel").addEventListener("click", () => {
    ackTarget = null;
    ackDialog.close();
  });

  // --- notification history ---------------------------------------------------------------
  // A panel over the page (the live feed keeps running behind it), re-drawn as records come.
  const historyDialog = document.getElementById("history-dialog");
  let historyTarget = null; // {street} or {alert}
  const CHANNELS = ["webhook", "email", "sms", "zalo_zns", "log"];
  const MESSAGES = ["raised", "escalated", "deescalated", "unacknowledged", "acknowledged",
    "cleared", "episode", "maintenance_over"];

  // The alerts the panel opened with stay in it after they clear (so their "cleared"
  // announcements show), with any the street raised since.
  function historyAlertIds(target) {
    if (target.alert) return [target.alert];
    const entry = streets.get(target.street);
    const now = entry && entry.props.alerts ? entry.props.alerts : [];
    return [...new Set([...(target.ids || []), ...now])];
  }

  async function fetchNotifications(ids, force) {
    const wanted = ids.filter((id) => force || !notifications.has(id));
    await Promise.all(wanted.map(async (id) => {
      try {
        const response = await api(`/v1/alerts/${encodeURIComponent(id)}/notifications`);
        notifications.set(id, await response.json());
      } catch (e) { /* the stream brings it later */ }
    }));
  }

  async function openHistory(target) {
    historyTarget = Object.assign({}, target, { ids: historyAlertIds(target) });
    if (!historyDialog.open) historyDialog.showModal();
    renderHistory();
    await fetchNotifications(historyAlertIds(historyTarget), true);
    renderHistory();
    renderAlerts();
  }

  function historyItem(item) {
    const li = el("li", "history-item");
    li.dataset.status = item.status;
    li.dataset.message = item.message;
    const channel = t(`notify.channel.${CHANNELS.includes(item.channel_type) ? item.channel_type : "log"}`);
    const message = t(`notify.message.${MESSAGES.includes(item.message) ? item.message : "raised"}`);
    li.append(
      el("span", "h-time", hhmm(item.delivered_at || item.queued_at)),
      el("span", "h-who", mask(item.recipient_name || item.recipient)),
      el("span", "h-channel", `${channel} · ${mask(item.channel)}`),
      el("span", "h-msg", message),
      el("span", "h-tier", item.tier ? t("notify.tier", { tier: item.tier }) : t("notify.tier_first")),
      el("span", `badge h-status status-${item.status}`, statusText(item.status)),
      el("span", "h-break"), // a phone puts channel, message and tier on a line of their own
    );
    if (item.error && item.status !== "delivered") {
      li.append(el("span", "h-error", t("notify.error", { attempts: item.attempts, error: mask(item.error) })));
    }
    return li;
  }

  function escalationText(e) {
    if (!e) return "";
    if (e.waiting && e.next_at) {
      // The record names the next tier by recipient id; a name is known once one was told.
      const names = new Map();
      for (const r of notifications.values()) {
        for (const i of r.notifications || []) names.set(i.recipient, i.recipient_name || i.recipient);
      }
      const who = (e.next_notify || []).map((id) => mask(names.get(id) || id)).join(", ");
      return t("notify.escalation_next", { tier: e.next_tier, time: hhmm(e.next_at), who: who || "–" });
    }
    if (e.stopped_by === "acknowledged") return t("notify.escalation_acked");
    if (e.stopped_by === "cleared") return t("notify.escalation_cleared");
    return "";
  }

  function renderHistory() {
    if (!historyTarget || !historyDialog.open) return;
    const ids = historyAlertIds(historyTarget);
    const first = notifications.get(ids[0]) || {};
    const what = historyTarget.street ? streetName(historyTarget.street) :
      (alerts.get(ids[0]) || (first.alert || {})).sensor || ids[0];
    document.getElementById("history-title").textContent = t("notify.title", { what });
    const body = document.getElementById("history-body");
    const sections = ids.map((id) => {
      const record = notifications.get(id) || {};
      const alert = alerts.get(id) || record.alert || {};
      const sensorId = alert.sensor || id.split(":")[0];
      const sensor = sensors.get(sensorId);
      const section = el("section", "history-alert");
      section.dataset.alertId = id;
      const head = [kindText(alert.kind), sensorId];
      if (sensor) head.push(placeName(sensor.props));
      if (alert.state) head.push(stateText(alert.state));
      section.append(el("h3", "", head.join(" · ")));
      const under = sensor && sensor.props.maintenance ? sensor.props.maintenance : record.maintenance;
      if (under) section.append(maintLine(maintText(under)));
      const escalation = escalationText(record.escalation);
      if (escalation) section.append(el("p", "escalation", escalation));
      const items = (record.notifications || []).slice()
        .sort((a, b) => String(a.queued_at).localeCompare(String(b.queued_at)));
      if (items.length) {
        const list = el("ol", "history-list");
        list.append(...items.map(historyItem));
        section.append(list);
      } else {
        section.append(el("p", "muted", t(under ? "notify.empty_maint" : "notify.empty")));
      }
      return section;
    });
    if (!sections.length) sections.push(el("p", "muted", t("notify.no_alerts")));
    body.replaceChildren(...sections);
  }

  function closeHistory() {
    historyTarget = null;
    if (historyDialog.open) historyDialog.close();
  }
  document.getElementById("history-close").addEventListener("click", closeHistory);
  historyDialog.addEventListener("close", () => { historyTarget = null; });

  function applyNotification(record) {
    if (!record || !record.alert_id) return;
    if (record.notifications === null) notifications.delete(record.alert_id);
    else notifications.set(record.alert_id, record);
    renderAlerts();
    renderHistory();
  }

  // --- maintenance ------------------------------------------------------------------------
  // An operator puts the selected sensor, or its whole street, under maintenance (who comes
  // from the key; why and until when are asked), and ends it. Viewers see no controls.
  const maintDialog = document.getElementById("maint-dialog");
  let maintTarget = null; // {sensor} or {street}, with end: true to end it
  const ICT_OFFSET = "+07:00"; // Ho Chi Minh City keeps UTC+7 all year

  function renderDetailMaintenance(p) {
    const box = document.getElementById("detail-maint");
    const parts = [];
    if (p && p.maintenance) parts.push(maintLine(maintText(p.maintenance)));
    if (p && role === "operator" && p.kind !== undefined) {
      const buttons = el("div", "maint-buttons");
      const add = (key, target, cls) => {
        const button = el("button", cls, t(key, { street: streetName(p.street) }));
        button.type = "button";
        button.addEventListener("click", () => openMaintenance(target));
        buttons.append(button);
      };
      if (!p.maintenance) {
        add("maint.start_sensor", { sensor: p.id }, "maint-start-sensor");
        if (p.kind !== "tide") add("maint.start_street", { street: p.street }, "maint-start-street");
      } else if (p.maintenance.scope === "street") {
        add("maint.end_street", { street: p.street, end: true }, "maint-end");
      } else {
        add("maint.end_sensor", { sensor: p.id, end: true }, "maint-end");
      }
      parts.push(buttons);
    }
    box.replaceChildren(...parts);
    box.hidden = parts.length === 0;
  }

  function maintWhat(target) {
    if (target.street) return streetName(target.street);
    const entry = sensors.get(target.sensor);
    return entry ? `${placeName(entry.props)} (${target.sensor})` : target.sensor;
  }

  function openMaintenance(target) {
    maintTarget = target;
    const what = maintWhat(target);
    const kind = target.street ? "street" : "sensor";
    document.getElementById("maint-title").textContent =
      t(target.end ? `maint.end_title_${kind}` : `maint.title_${kind}`, { what });
    document.getElementById("maint-body").textContent =
      t(target.end ? "maint.end_body" : `maint.body_${kind}`, { who });
    document.getElementById("maint-until-field").hidden = Boolean(target.end);
    document.getElementById("maint-reason").value = "";
    document.getElementById("maint-error").textContent = "";
    document.getElementById("maint-confirm").disabled = false;
    document.getElementById("maint-confirm").textContent = t(target.end ? "maint.end_confirm" : "maint.confirm");
    if (!target.end) {
      document.querySelector('input[name="maint-preset"][value="2"]').checked = true;
      document.getElementById("maint-custom").value = "";
      presetChanged();
    }
    if (!maintDialog.open) maintDialog.showModal();
    document.getElementById("maint-reason").focus();
  }

  function chosenUntil() {
    const preset = document.querySelector('input[name="maint-preset"]:checked').value;
    if (preset !== "custom") return new Date(Date.now() + Number(preset) * 3600 * 1000);
    const value = document.getElementById("maint-custom").value; // wall time in the city
    if (!value) return null;
    const at = new Date(`${value.length === 16 ? `${value}:00` : value}${ICT_OFFSET}`);
    return Number.isNaN(at.getTime()) ? null : at;
  }

  function presetChanged() {
    const custom = document.querySelector('input[name="maint-preset"]:checked').value === "custom";
    const input = document.getElementById("maint-custom");
    input.hidden = !custom;
    if (custom && !input.value) {
      // Start from 4 h ahead, in the city's wall time.
      const ahead = new Date(Date.now() + 4 * 3600 * 1000 + 7 * 3600 * 1000);
      input.value = ahead.toISOString().slice(0, 16);
    }
    const until = chosenUntil();
    document.getElementById("maint-ends").textContent =
      until ? t("maint.ends", { until: whenText(until.toISOString()) }) : "";
  }
  for (const radio of document.querySelectorAll('input[name="maint-preset"]')) {
    radio.addEventListener("change", presetChanged);
  }
  document.getElementById("maint-custom").addEventListener("input", presetChanged);
  document.getElementById("maint-reason").addEventListener("input", () => {
    document.getElementById("maint-error").textContent = "";
  });

  async function sendMaintenance(event) {
    event.preventDefault();
    if (!maintTarget) return;
    const target = maintTarget;
    const reason = document.getElementById("maint-reason").value.trim();
    const error = document.getElementById("maint-error");
    if (!reason) {
      error.textContent = t("maint.need_reason");
      return;
    }
    let until = null;
    if (!target.end) {
      until = chosenUntil();
      if (!until || until.getTime() <= Date.now()) {
        error.textContent = t("maint.need_until");
        return;
      }
    }
    const confirm = document.getElementById("maint-confirm");
    confirm.disabled = true;
    error.textContent = t("ack.sending");
    const path = target.street ?
      `/v1/maintenance/streets/${encodeURIComponent(target.street)}` :
      `/v1/maintenance/sensors/${encodeURIComponent(target.sensor)}`;
    try {
      const response = target.end ?
        await api(`${path}?reason=${encodeURIComponent(reason)}`, { method: "DELETE" }) :
        await api(path, {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ reason, until: until.toISOString() }),
        });
      await response.json();
      maintDialog.close();
      maintTarget = null;
      setNotice(target.end ? "maint.done_end" : "maint.done_start", { what: maintWhat(target) }, "ok");
      // The API streams each sensor's change; this catches up at once if the stream lags.
      await loadAll().catch(() => {});
    } catch (e) {
      const why = failure(e, target.end ? { 403: "maint.viewer_key", 404: "maint.not_under" } :
        { 403: "maint.viewer_key", 404: "maint.no_sensor", 422: "maint.refused" });
      error.textContent = t(why.key, why.params || { detail: e.message });
      confirm.disabled = false;
    }
  }
  document.getElementById("maint-form").addEventListener("submit", sendMaintenance);
  document.getElementById("maint-cancel").addEventListener("click", () => {
    maintTarget = null;
    maintDialog.close();
  });

  // --- sensor detail and chart ------------------------------------------------------------
  function renderDetail() {
    const entry = selected ? sensors.get(selected) : null;
    const title = document.getElementById("detail-title");
    if (!entry) {
      title.textContent = t("detail.select");
      document.getElementById("detail-facts").textContent = "";
      document.getElementById("detail-verdict").textContent = "";
      renderDetailMaintenance(null);
      return;
    }
    const p = entry.props;
    title.textContent = t("detail.title", { name: placeName(p), street: streetName(p.street) });
    const facts = [];
    facts.push(p.level_cm === null ? t("detail.no_reading") : p.kind === "tide" ?
      t("detail.facts_stage", { stage: stageText(p.level_cm), time: hhmm(p.time) }) :
      t("detail.facts", { depth: num(p.level_cm, 1), time: hhmm(p.time) }));
    if (p.level_name) facts.push(levelText(ladderOf(p), p.level_name));
    if (p.battery_v !== null && p.battery_v !== undefined) {
      facts.push(t("row.battery", { volts: num(p.battery_v, 2) }));
    }
    if (p.stale) facts.push(t("detail.stale"));
    document.getElementById("detail-facts").textContent = facts.join(" · ");
    document.getElementById("detail-verdict").textContent = verdictText(p);
    renderDetailMaintenance(p);
  }

  async function selectSensor(id, byUser) {
    if (byUser) userSelected = true;
    if (selected === id && chartPoints.length) return;
    selected = id;
    chartPoints = [];
    renderDetail();
    drawChart();
    const start = new Date(Date.now() - CHART_WINDOW_MS).toISOString();
    try {
      const response = await api(
        `/v1/sensors/${encodeURIComponent(id)}/readings?start=${encodeURIComponent(start)}&limit=5000`);
      const page = await response.json();
      if (selected !== id) return;
      const loaded = page.points.filter((p) => p.level_cm !== null)
        .map((p) => ({ t: Date.parse(p.time), v: p.level_cm }));
      // Readings that arrived on the stream meanwhile stay.
      const last = loaded.length ? loaded[loaded.length - 1].t : -Infinity;
      chartPoints = loaded.concat(chartPoints.filter((p) => p.t > last));
      drawChart();
    } catch (e) { /* the chart fills from the stream */ }
  }

  function appendChartPoint(p) {
    if (p.id !== selected || p.level_cm === null || !p.time) return;
    const point = { t: Date.parse(p.time), v: p.level_cm };
    const last = chartPoints[chartPoints.length - 1];
    if (last && point.t <= last.t) return;
    chartPoints.push(point);
    drawChart();
  }

  function drawChart() {
    const chart = document.getElementById("chart");
    const entry = selected ? sensors.get(selected) : null;
    const W = Math.max(chart.clientWidth, 200), H = Math.max(chart.clientHeight, 120);
    const left = 44, right = 10, top = 10, bottom = 24;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    const add = (tag, attrs, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      if (text !== undefined) node.textContent = text;
      svg.append(node);
      return node;
    };
    if (!entry) {
      chart.replaceChildren(svg);
      return;
    }
    const props = entry.props;
    const t1 = Date.now(), t0 = t1 - CHART_WINDOW_MS;
    chartPoints = chartPoints.filter((p) => p.t >= t0 - 60000);
    const values = chartPoints.map((p) => p.v);
    if (!values.length) {
      add("text", { x: left, y: H / 2, class: "empty" }, t("chart.empty"));
      chart.replaceChildren(svg);
      return;
    }
    const tide = props.kind === "tide";
    const limits = props.thresholds_cm;
    const lo = tide ? Math.min(...values, limits[0]) - 10 : Math.min(0, ...values);
    const hi = Math.max(limits[tide ? limits.length - 1 : 0] * 1.15, ...values) * 1.05;
    const x = (time) => left + ((time - t0) / (t1 - t0)) * (W - left - right);
    const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (H - top - bottom);
    add("line", { class: "axis", x1: left, y1: H - bottom, x2: W - right, y2: H - bottom });
    add("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom });
    limits.forEach((limit, i) => {
      if (limit > hi || limit < lo) return;
      add("line", {
        class: "threshold", x1: left, x2: W - right, y1: y(limit), y2: y(limit),
        stroke: levelColor(i + 1),
      });
      add("text", { x: left - 4, y: y(limit) + 4, class: "tick" },
        tide ? stageText(limit) : num(limit, 0));
    });
    add("text", { x: left - 4, y: top + 10, class: "tick" }, t(tide ? "chart.unit_m" : "chart.unit"));
    for (let k = 0; k <= 4; k += 1) {
      const time = t0 + (k * (t1 - t0)) / 4;
      const anchor = k === 0 ? "start" : k === 4 ? "end" : "middle";
      add("text", { x: x(time), y: H - 6, class: "time", "text-anchor": anchor },
        hhmm(new Date(time).toISOString()));
    }
    const shown = chartPoints.filter((p) => p.t >= t0);
    add("polyline", {
      class: "series",
      points: shown.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" "),
    });
    const lastPoint = shown[shown.length - 1];
    if (lastPoint) add("circle", { class: "now", cx: x(lastPoint.t), cy: y(lastPoint.v), r: 4 });
    chart.replaceChildren(svg);
    chart.dataset.points = String(shown.length);
  }

  function autoSelect() {
    // Until the operator picks one, the chart follows the worst street's worst sensor.
    if (userSelected) return;
    const ranked = [...streets.values()].map((s) => s.props)
      .filter((p) => p.worst_sensor)
      .sort((a, b) => ((b.level || 0) - (a.level || 0)) || ((b.level_cm || 0) - (a.level_cm || 0)));
    if (ranked.length && ranked[0].worst_sensor !== selected) selectSensor(ranked[0].worst_sensor, false);
  }

  // --- live stream ------------------------------------------------------------------------
  function setStatus(state) {
    streamState = state;
    renderStatus();
  }
  function renderStatus() {
    const status = document.getElementById("status");
    status.dataset.state = streamState;
    const key = {
      live: "status.live", retrying: "status.reconnecting", loading: "status.loading",
      idle: "status.need_key",
    }[streamState] || "status.reconnecting";
    status.textContent = t(key);
  }

  function renderWho() {
    const text = role === "operator" ? t("key.operator", { name: who }) :
      role === "viewer" ? (who === "anonymous" ? t("key.anonymous") : t("key.viewer", { name: who })) :
        t("key.none");
    const span = document.getElementById("who");
    span.textContent = text;
    span.dataset.role = role || "";
  }

  let streetsTimer = null;
  function scheduleStreets() {
    if (streetsTimer) return;
    streetsTimer = setTimeout(async () => {
      streetsTimer = null;
      try {
        const collection = await (await api("/v1/streets")).json();
        collection.features.forEach(upsertStreet);
        renderAlerts();
        autoSelect();
      } catch (e) { /* the next event tries again */ }
    }, STREETS_REFRESH_MS);
  }

  function sensorFromFeature(f) {
    return Object.assign({}, f.properties, { lon: f.geometry.coordinates[0], lat: f.geometry.coordinates[1] });
  }

  function mergeSensor(props) {
    const entry = sensors.get(props.id);
    if (!entry) return;
    upsertSensor(Object.assign({}, props, { lon: entry.props.lon, lat: entry.props.lat }));
  }

  function handleEvent(type, data) {
    if (type === "reading") {
      mergeSensor(data);
      appendChartPoint(data);
      scheduleStreets();
    } else if (type === "alert") {
      replaceSensorAlerts(data.sensor, data.alerts);
      if (data.properties) mergeSensor(data.properties);
      renderAlerts();
      renderHistory();
      scheduleStreets();
      fetchNotifications(data.alerts.filter((a) => a.active).map((a) => a.alert_id), false)
        .then(renderAlerts);
    } else if (type === "sensor") {
      // An operator's change: maintenance (grey, with why and until when), calibration.
      if (data.retired) return scheduleStreets();
      mergeSensor(data);
      for (const entry of streets.values()) styleStreet(entry);
      renderAlerts();
      scheduleStreets();
    } else if (type === "notification") {
      applyNotification(data);
    } else if (type === "gap") {
      notifications.clear();
      loadAll();
    }
  }

  function handleBlock(block) {
    let type = "message", id = null;
    const data = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    if (id !== null) lastEventId = id;
    if (!data.length) return;
    try {
      handleEvent(type, JSON.parse(data.join("\n")));
    } catch (e) { /* a malformed event must not stop the stream */ }
  }

  async function runStream() {
    // fetch, not EventSource: EventSource cannot send the Authorization header.
    if (streamAbort) streamAbort.abort();
    const abort = new AbortController();
    streamAbort = abort;
    while (!abort.signal.aborted) {
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (lastEventId) h["Last-Event-ID"] = lastEventId;
        const response = await fetch("/v1/stream", { headers: h, signal: abort.signal, cache: "no-store" });
        if (response.status === 401 || response.status === 403) {
          setStatus("idle");
          return askForKey("error.wrong_key");
        }
        if (!response.ok || !response.body) throw new Error(String(response.status));
        setStatus("live");
        lastHeard = Date.now();
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          lastHeard = Date.now();
          buffer += decoder.decode(value, { stream: true });
          let match;
          while ((match = /\r\n\r\n|\n\n|\r\r/.exec(buffer))) {
            handleBlock(buffer.slice(0, match.index));
            buffer = buffer.slice(match.index + match[0].length);
          }
        }
      } catch (e) {
        if (abort.signal.aborted) return;
      }
      setStatus("retrying");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }

  // --- start ------------------------------------------------------------------------------
  let fitted = false;
  async function loadAll() {
    const [sensorResponse, streetResponse, alertResponse] = await Promise.all([
      api("/v1/sensors"), api("/v1/streets"), api("/v1/alerts?state=active&limit=1000"),
    ]);
    const sensorCollection = await sensorResponse.json();
    const streetCollection = await streetResponse.json();
    const alertPage = await alertResponse.json();
    sensorCollection.features.map(sensorFromFeature).forEach(upsertSensor);
    streetCollection.features.forEach(upsertStreet);
    alerts.clear();
    for (const a of alertPage.alerts) alerts.set(a.alert_id, a);
    for (const entry of streets.values()) styleStreet(entry); // a street's maintenance
    renderAlerts();
    // Each open alert's notification record, once; the stream keeps them current. Records
    // of alerts no longer open are forgotten.
    const shown = historyTarget ? historyAlertIds(historyTarget) : [];
    for (const id of notifications.keys()) {
      if (!alerts.has(id) && !shown.includes(id)) notifications.delete(id);
    }
    await fetchNotifications([...alerts.keys()], false);
    renderAlerts();
    renderHistory();
    if (!fitted && streetCollection.features.length) {
      // Fit the ward around its streets (the river beside them); the Phu An gauge may then
      // sit outside, shown by its hint at the edge. Room on the right for the labels.
      const bounds = L.latLngBounds([]);
      for (const f of streetCollection.features) {
        for (const [lon, lat] of f.geometry.coordinates) bounds.extend([lat, lon]);
      }
      const phone = window.innerWidth < 600;
      // A phone's narrow map shows the streets alone, big enough to touch.
      if (wardBounds && !phone) bounds.extend(wardBounds);
      map.invalidateSize();
      map.fitBounds(bounds, {
        paddingTopLeft: phone ? [16, 56] : [10, 10], paddingBottomRight: phone ? [190, 24] : [210, 10],
        animate: false,
      });
      fitted = true;
    }
    placeGaugeHint();
    autoSelect();
    document.body.dataset.loaded = "true";
  }

  async function whoAmI() {
    const response = await api("/v1/me");
    const me = await response.json();
    role = me.role;
    who = me.name;
    renderWho();
    renderAlerts();
    renderDetail();
  }

  async function start() {
    try {
      setStatus("loading");
      await whoAmI();
      await loadAll();
      runStream();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        role = null;
        renderWho();
        setStatus("idle");
        return askForKey(apiKey ? "error.wrong_key" : "");
      }
      setStatus("retrying");
      setTimeout(start, 5000);
    }
  }

  // The key dialog never stops the live feed: the stream keeps running behind it.
  const keyDialog = document.getElementById("key-dialog");
  function askForKey(errorKey) {
    document.getElementById("key-error").textContent = errorKey ? t(errorKey) : "";
    document.getElementById("key-input").value = "";
    if (!keyDialog.open) keyDialog.showModal();
  }
  document.getElementById("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = document.getElementById("key-input").value.trim();
    const error = document.getElementById("key-error");
    error.textContent = t("key.checking");
    try {
      const response = await fetch("/v1/me", { headers: { Authorization: "Bearer " + candidate } });
      if (!response.ok) {
        error.textContent = t(response.status === 401 ? "error.wrong_key" : "error.network");
        return;
      }
      const me = await response.json();
      const changed = candidate !== apiKey;
      apiKey = candidate;
      localStorage.setItem(KEY_STORAGE, apiKey);
      role = me.role;
      who = me.name;
      keyDialog.close();
      renderWho();
      renderAlerts();
      renderDetail();
      setNotice(null);
      if (changed || streamState !== "live") {
        await loadAll().catch(() => {});
        runStream();
      }
    } catch (e) {
      error.textContent = t("error.network");
    }
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    apiKey = "";
    role = config.anonymousRead ? "viewer" : null;
    who = config.anonymousRead ? "anonymous" : "";
    document.getElementById("key-input").value = "";
    document.getElementById("key-error").textContent = t("key.forgotten");
    renderWho();
    renderAlerts();
    renderDetail();
  });
  document.getElementById("key-close").addEventListener("click", () => keyDialog.close());
  document.getElementById("key-button").addEventListener("click", () => askForKey(""));

  document.getElementById("lang-button").addEventListener("click", async () => {
    const next = lang === "vi" ? "en" : "vi";
    localStorage.setItem(LANG_STORAGE, next);
    await loadCatalogue(next);
    rerenderAll();
  });

  function tick() {
    document.getElementById("clock").textContent = hhmm(new Date().toISOString());
    // A feed that dropped (or went quiet past its heartbeats) is said plainly, with its age.
    const banner = document.getElementById("feed-banner");
    const quiet = lastHeard ? Date.now() - lastHeard : 0;
    const old = lastHeard && (streamState !== "live" || quiet > FEED_QUIET_MS);
    banner.hidden = !old;
    document.body.dataset.feed = old ? "old" : "live";
    if (old) banner.textContent = t("banner.old", { seconds: Math.round(quiet / 1000) });
  }
  setInterval(tick, 1000);
  setInterval(drawChart, 10000); // the chart's window slides with the clock
  // Stale flags move with the clock: refresh the whole picture now and then.
  setInterval(() => { if (streamState === "live") loadAll().catch(() => {}); }, 60000);
  window.addEventListener("resize", () => drawChart());

  (async function boot() {
    await loadCatalogue(lang);
    rerenderAll();
    await loadOverlays();
    if (apiKey || config.anonymousRead) start();
    else {
      setStatus("idle");
      askForKey("");
    }
  })();
})();
