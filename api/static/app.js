/* The IOC page: map, alert list and charts, kept live from /v1/stream. No framework: the
   page must load from the API alone, offline, on a wall screen or a phone. */
"use strict";
(function () {
  const ZONE = "Asia/Ho_Chi_Minh";
  const KEY_STORAGE = "floodwatch.apiKey";
  const LEVEL_COLORS = ["--level0", "--level1", "--level2", "--level3", "--level4"];
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();

  function readConfig() {
    try {
      return JSON.parse(document.getElementById("config").textContent);
    } catch (e) {
      return {};
    }
  }
  const config = readConfig();
  let apiKey = localStorage.getItem(KEY_STORAGE) || "";
  const sensors = new Map(); // id -> {props, marker}
  const streets = new Map(); // name -> {props, line}
  const alerts = new Map(); // alert_id -> alert
  let selected = null;
  let lastEventId = null;
  let streamAbort = null;

  const timeFormat = new Intl.DateTimeFormat("en-GB", {
    timeZone: ZONE, hour: "2-digit", minute: "2-digit", day: "2-digit", month: "short",
  });
  const shortTime = new Intl.DateTimeFormat("en-GB", {
    timeZone: ZONE, hour: "2-digit", minute: "2-digit",
  });
  const fmtTime = (iso) => (iso ? timeFormat.format(new Date(iso)) : "–");

  function levelColor(props) {
    if (!props || props.level === null || props.level === undefined) return color("--stale");
    if (props.stale) return color("--stale");
    return color(LEVEL_COLORS[Math.min(props.level, 4)]);
  }

  // --- API access -------------------------------------------------------------------------
  class AuthError extends Error {}

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (apiKey) h.Authorization = "Bearer " + apiKey;
    return h;
  }

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = headers(opts.headers);
    const response = await fetch(path, opts);
    if (response.status === 401) throw new AuthError("key refused");
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        if (typeof body.detail === "string") detail = body.detail;
      } catch (e) { /* not JSON */ }
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    return response;
  }

  // --- map --------------------------------------------------------------------------------
  const map = L.map("map", {
    zoomControl: true, attributionControl: Boolean(config.tileUrl), zoomSnap: 0.25,
  }).setView([10.8045, 106.733], 16);
  if (config.tileUrl) {
    L.tileLayer(config.tileUrl, { maxZoom: 19, attribution: config.tileAttribution || "" })
      .addTo(map);
  }
  const streetLayer = L.layerGroup().addTo(map);
  const sensorLayer = L.layerGroup().addTo(map);

  function sensorTooltip(p) {
    const depth = p.level_cm === null ? "no reading" : `${p.level_cm.toFixed(1)} cm`;
    const stale = p.stale ? " · stale" : "";
    return `${p.name} (${p.id})<br>${depth} · ${p.level_name || "–"}${stale}<br>${fmtTime(p.time)}`;
  }

  function upsertSensor(feature) {
    const p = feature.properties;
    let entry = sensors.get(p.id);
    if (!entry) {
      const [lon, lat] = feature.geometry.coordinates;
      const marker = L.circleMarker([lat, lon], {
        radius: (p.kind === "tide" ? 13 : 10) * (window.innerWidth < 600 ? 0.75 : 1),
        weight: p.kind === "tide" ? 4 : 2,
        color: p.kind === "tide" ? "#5fb3ff" : "#0f151b",
        fillOpacity: 0.95,
        className: `sensor sensor-${p.id}`,
      }).addTo(sensorLayer);
      marker.bindTooltip("", { direction: "top" });
      if (p.kind === "tide") {
        L.tooltip({ permanent: true, direction: "right", offset: [14, 0], className: "street-label" })
          .setLatLng([lat, lon]).setContent(p.name).addTo(sensorLayer);
      }
      marker.on("click", () => {
        marker.closeTooltip(); // the sidebar shows the details now
        selectSensor(p.id);
      });
      entry = { props: p, marker };
      sensors.set(p.id, entry);
      const el = marker.getElement();
      if (el) el.setAttribute("data-sensor", p.id);
    }
    entry.props = p;
    entry.marker.setStyle({ fillColor: levelColor(p), dashArray: p.stale ? "3 3" : null });
    entry.marker.setTooltipContent(sensorTooltip(p));
    const el = entry.marker.getElement();
    if (el) {
      el.setAttribute("data-level", p.level === null ? "" : String(p.level));
      el.setAttribute("data-stale", String(p.stale));
    }
    if (p.kind === "tide") showTide(p);
    if (selected === p.id) showFacts(p);
  }

  function upsertStreet(feature) {
    const p = feature.properties;
    let entry = streets.get(p.name);
    if (!entry) {
      const latlngs = feature.geometry.coordinates.map(([lon, lat]) => [lat, lon]);
      const line = L.polyline(latlngs, { weight: 9, opacity: 0.85, className: "street" })
        .addTo(streetLayer);
      // Named at one end, where the label cannot sit on a crossing street.
      L.tooltip({ permanent: true, direction: "left", className: "street-label" })
        .setLatLng(latlngs[0]).setContent(p.name).addTo(streetLayer);
      entry = { props: p, line };
      streets.set(p.name, entry);
    }
    entry.props = p;
    entry.line.setStyle({ color: levelColor(p) });
  }

  function recolourStreets() {
    // The street's colour follows its deepest sensor, as /v1/streets computes it.
    for (const entry of streets.values()) {
      let worst = null;
      for (const id of entry.props.sensors) {
        const s = sensors.get(id);
        if (s && s.props.level_cm !== null && (!worst || s.props.level_cm > worst.level_cm)) {
          worst = s.props;
        }
      }
      if (worst) {
        entry.props = Object.assign({}, entry.props, {
          level: worst.level, level_cm: worst.level_cm, stale: worst.stale,
        });
      }
      entry.line.setStyle({ color: levelColor(entry.props) });
    }
  }

  function showTide(p) {
    document.getElementById("tide").hidden = false;
    document.getElementById("tide-name").textContent = p.name;
    document.getElementById("tide-stage").textContent =
      p.level_cm === null ? "–" : `${(p.level_cm / 100).toFixed(2)} m`;
    const badge = document.getElementById("tide-level");
    badge.textContent = p.level_name || "";
    badge.style.setProperty("--c", levelColor(p));
    document.getElementById("tide-time").textContent =
      (p.stale ? "stale · " : "") + fmtTime(p.time);
  }

  // --- alerts -----------------------------------------------------------------------------
  const STATE_TEXT = {
    active_unack: "active, not acknowledged",
    active_ack: "active, acknowledged",
    cleared_unack: "cleared, not acknowledged",
    cleared_ack: "cleared, acknowledged",
  };

  function renderAlerts() {
    const list = document.getElementById("alerts");
    const items = [...alerts.values()].filter((a) => a.state !== "cleared_ack");
    items.sort((a, b) => (b.active - a.active) || ((b.level || 0) - (a.level || 0)) ||
      String(b.changed_at).localeCompare(String(a.changed_at)));
    list.replaceChildren(...items.map(alertItem));
    document.getElementById("alerts-empty").hidden = items.length > 0;
    document.getElementById("alert-count").textContent = items.length ? `(${items.length})` : "";
  }

  function alertItem(a) {
    const li = document.createElement("li");
    li.dataset.alertId = a.alert_id;
    li.dataset.state = a.state || "";
    li.style.setProperty("--c", a.active ? color(LEVEL_COLORS[Math.min(a.level || 0, 4)]) : color("--stale"));
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = `${a.street || a.sensor}: ${a.level_name || a.kind}`;
    li.append(what);
    if (a.state && a.state.endsWith("_unack")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "ack";
      button.textContent = "Acknowledge";
      button.addEventListener("click", () => acknowledge(a.alert_id));
      li.append(button);
    } else {
      li.append(document.createElement("span"));
    }
    const meta = document.createElement("span");
    meta.className = "meta";
    const ack = a.acked_by ? ` · by ${a.acked_by}${a.note ? `: “${a.note}”` : ""}` : "";
    meta.textContent = `${a.sensor} · ${STATE_TEXT[a.state] || a.state} · ${fmtTime(a.changed_at)}${ack}`;
    li.append(meta);
    return li;
  }

  function replaceSensorAlerts(sensorId, list) {
    for (const [id, a] of alerts) if (a.sensor === sensorId) alerts.delete(id);
    for (const a of list) alerts.set(a.alert_id, a);
    renderAlerts();
  }

  async function acknowledge(alertId) {
    const note = window.prompt("Acknowledge this alert. Note (what you saw or did):", "");
    if (note === null) return;
    try {
      const response = await api(`/v1/alerts/${encodeURIComponent(alertId)}/ack`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ note }),
      });
      const alert = await response.json();
      alerts.set(alert.alert_id, alert);
      renderAlerts();
    } catch (e) {
      if (e instanceof AuthError) return askForKey("The key was refused.");
      const reason = e.status === 403 ? "acknowledging needs an operator key" : e.message;
      setStatus(statusState, `could not acknowledge: ${reason}`);
    }
  }

  // --- sensor detail and chart ------------------------------------------------------------
  function showFacts(p) {
    document.getElementById("detail-title").textContent = `${p.name} · ${p.street}`;
    const depth = p.level_cm === null ? "no reading yet" : `${p.level_cm.toFixed(1)} cm`;
    const battery = p.battery_v === null ? "" : ` · battery ${p.battery_v.toFixed(2)} V`;
    document.getElementById("detail-facts").textContent =
      `${depth} (${p.level_name || "–"}) at ${fmtTime(p.time)}${p.stale ? " · STALE" : ""}${battery}`;
  }

  async function selectSensor(id) {
    selected = id;
    const entry = sensors.get(id);
    if (!entry) return;
    showFacts(entry.props);
    const start = new Date(Date.now() - 6 * 3600 * 1000).toISOString();
    try {
      const response = await api(
        `/v1/sensors/${encodeURIComponent(id)}/readings?start=${encodeURIComponent(start)}&every=5m&agg=max`);
      const page = await response.json();
      if (selected === id) drawChart(page.points, entry.props);
    } catch (e) {
      if (e instanceof AuthError) askForKey("The key was refused.");
    }
  }

  function drawChart(points, props) {
    const chart = document.getElementById("chart");
    const W = 320, H = 140, left = 34, right = 6, top = 8, bottom = 20;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    const add = (tag, attrs, text) => {
      const el = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      if (text !== undefined) el.textContent = text;
      svg.append(el);
      return el;
    };
    const values = points.map((p) => p.level_cm).filter((v) => v !== null);
    if (!values.length) {
      add("text", { x: left, y: H / 2 }, "no readings in the last 6 hours");
      chart.replaceChildren(svg);
      return;
    }
    const t0 = Date.now() - 6 * 3600 * 1000, t1 = Date.now();
    const firstThreshold = props.thresholds_cm[0];
    const lo = Math.min(0, ...values), hi = Math.max(firstThreshold * 1.2, ...values) * 1.05;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
    const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (H - top - bottom);
    add("line", { class: "axis", x1: left, y1: y(lo), x2: W - right, y2: y(lo) });
    add("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom });
    props.thresholds_cm.forEach((limit, i) => {
      if (limit > hi) return;
      add("line", {
        class: "threshold", x1: left, x2: W - right, y1: y(limit), y2: y(limit),
        stroke: color(LEVEL_COLORS[Math.min(i + 1, 4)]),
      });
    });
    add("text", { x: 2, y: y(hi) + 10 }, `${hi.toFixed(0)} cm`);
    add("text", { x: 2, y: y(lo) }, `${lo.toFixed(0)}`);
    add("text", { x: left, y: H - 4 }, shortTime.format(new Date(t0)));
    add("text", { x: W - right - 30, y: H - 4 }, shortTime.format(new Date(t1)));
    const path = points.filter((p) => p.level_cm !== null)
      .map((p) => `${x(Date.parse(p.time)).toFixed(1)},${y(p.level_cm).toFixed(1)}`).join(" ");
    add("polyline", { class: "series", points: path });
    chart.replaceChildren(svg);
  }

  // --- live stream ------------------------------------------------------------------------
  let statusState = "idle";
  function setStatus(state, text) {
    statusState = state;
    const el = document.getElementById("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function handleEvent(type, data) {
    if (type === "reading") {
      upsertSensor({ properties: data });
      recolourStreets();
    } else if (type === "alert") {
      replaceSensorAlerts(data.sensor, data.alerts);
      const entry = sensors.get(data.sensor);
      if (entry && data.properties) {
        upsertSensor({ properties: data.properties });
        recolourStreets();
      } else if (entry) {
        entry.props = Object.assign({}, entry.props, {
          alert_level: data.alert_level, alert_state: data.alert_state,
        });
      }
    } else if (type === "gap") {
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
        if (response.status === 401) return askForKey("The key was refused.");
        if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
        setStatus("live", "live");
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
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
      setStatus("retrying", "reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }

  // --- start ------------------------------------------------------------------------------
  let fitted = false;
  async function loadAll() {
    const [sensorResponse, streetResponse, alertResponse] = await Promise.all([
      api("/v1/sensors"), api("/v1/streets"), api("/v1/alerts?state=all&limit=500"),
    ]);
    const sensorCollection = await sensorResponse.json();
    const streetCollection = await streetResponse.json();
    const alertPage = await alertResponse.json();
    streetCollection.features.forEach(upsertStreet);
    sensorCollection.features.forEach(upsertSensor);
    alerts.clear();
    for (const a of alertPage.alerts) alerts.set(a.alert_id, a);
    renderAlerts();
    if (!fitted && sensorCollection.features.length) {
      const bounds = L.latLngBounds(sensorCollection.features.map(
        (f) => [f.geometry.coordinates[1], f.geometry.coordinates[0]]));
      for (const f of streetCollection.features) {
        for (const [lon, lat] of f.geometry.coordinates) bounds.extend([lat, lon]);
      }
      map.invalidateSize();
      map.fitBounds(bounds, { padding: [28, 28], animate: false });
      fitted = true;
    }
    document.body.dataset.loaded = "true";
  }

  async function start() {
    try {
      setStatus("retrying", "loading…");
      await loadAll();
      runStream();
    } catch (e) {
      if (e instanceof AuthError) return askForKey("The key was refused; enter another.");
      setStatus("retrying", `cannot load: ${e.message}`);
      setTimeout(start, 5000);
    }
  }

  const dialog = document.getElementById("key-dialog");
  function askForKey(message) {
    if (streamAbort) streamAbort.abort();
    setStatus("idle", "API key needed");
    document.getElementById("key-error").textContent = message || "";
    document.getElementById("key-input").value = "";
    if (!dialog.open) dialog.showModal();
  }
  document.getElementById("key-form").addEventListener("submit", () => {
    apiKey = document.getElementById("key-input").value.trim();
    if (apiKey) localStorage.setItem(KEY_STORAGE, apiKey);
    start();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    apiKey = "";
    document.getElementById("key-input").value = "";
    if (!config.anonymousRead) document.getElementById("key-error").textContent = "Key forgotten.";
  });
  document.getElementById("key-button").addEventListener("click", () => askForKey(""));

  function tick() {
    document.getElementById("clock").textContent = shortTime.format(new Date()) + " ICT";
  }
  tick();
  setInterval(tick, 15000);
  // Stale flags move with the clock: refresh the whole picture now and then.
  setInterval(() => { if (statusState === "live") loadAll().catch(() => {}); }, 60000);

  if (apiKey || config.anonymousRead) start();
  else askForKey("");
})();
