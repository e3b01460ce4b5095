// Fleetplane portal, fleet and vehicle pages: live updates. The pages are
// complete without it (server-rendered); this keeps them current:
//  - an EventSource on #fleet-live[data-live-url] ("vehicle" events: small
//    JSON objects with vehicle and any of online, status, last_seen, lat,
//    lon, alt, battery, mode, armed), applied to every element
//    [data-vehicle=V] [data-field=F] and to the fleet picture's marker
//    #marker-V and track #track-V;
//  - while the stream is not open, polling of data-status-url (presence)
//    every few seconds, so online/offline still shows without a reload;
//  - select[data-autosubmit] submits its form on change.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 5000;
  const RECONNECT_MS = 30000;
  const MAX_TRACK = 300;

  document.addEventListener("change", (ev) => {
    const el = ev.target;
    if (el.matches && el.matches("select[data-autosubmit]") && el.form) el.form.submit();
  });

  const live = document.getElementById("fleet-live");
  if (!live || !window.EventSource) return;
  const statusEl = document.getElementById("live-status");
  const picture = document.getElementById("fleet-picture");

  const setStatus = (state, text) => {
    if (!statusEl) return;
    statusEl.dataset.state = state;
    statusEl.textContent = text;
  };

  const byVehicle = (vid) => {
    const q = '[data-vehicle="' + (window.CSS && CSS.escape ? CSS.escape(vid) : vid) + '"]';
    return Array.from(document.querySelectorAll(q));
  };

  const fields = (vid, name) => {
    const out = [];
    for (const el of byVehicle(vid)) {
      for (const f of el.querySelectorAll('[data-field="' + name + '"]')) out.push(f);
    }
    return out;
  };

  const fmt = (n, digits) => {
    const s = Number(n).toFixed(digits);
    return s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s;
  };

  // --- the picture (the same projection as fleet_svg.go's) ---
  // Every position drawn is kept (by vehicle, oldest first); when a live
  // one falls outside the picture, the picture is fitted again around all
  // of them, as the server fits it.
  const ds = picture ? picture.dataset : {};
  const proj = picture ? {
    w: +ds.w, h: +ds.h, lat0: +ds.lat0, lon0: +ds.lon0, k: +ds.k, scale: +ds.scale, wrap: ds.wrap === "1",
    margin: +ds.margin || 40, minSpan: +ds.minSpan || 0.002,
  } : null;
  const project = (lat, lon) => {
    if (proj.wrap && lon < 0) lon += 360;
    return [proj.w / 2 + (lon - proj.lon0) * proj.k * proj.scale, proj.h / 2 - (lat - proj.lat0) * proj.scale];
  };
  const unproject = (x, y) => {
    let lon = proj.lon0 + (x - proj.w / 2) / (proj.k * proj.scale);
    if (lon > 180) lon -= 360;
    return [proj.lat0 - (y - proj.h / 2) / proj.scale, lon];
  };
  const positions = {}; // vehicle → [[lat, lon], ...]
  if (picture) {
    for (const line of picture.querySelectorAll("polyline.track")) {
      positions[line.dataset.vehicle] = (line.getAttribute("points") || "").trim().split(/\s+/).filter(Boolean)
        .map((p) => { const [x, y] = p.split(",").map(Number); return unproject(x, y); });
    }
    for (const g of picture.querySelectorAll("g.marker")) {
      const list = positions[g.dataset.vehicle] || (positions[g.dataset.vehicle] = []);
      if (!list.length) list.push([+g.dataset.lat, +g.dataset.lon]);
    }
  }

  const niceFloor = (v) => {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const f of [5, 2, 1]) if (f * p <= v * (1 + 1e-9)) return f * p;
    return p;
  };
  const latLonText = (lat, lon) => Math.abs(lat).toFixed(4) + "° " + (lat < 0 ? "S" : "N") + ", " +
    Math.abs(lon).toFixed(4) + "° " + (lon < 0 ? "W" : "E");

  // refit fits the projection around every kept position and redraws.
  const refit = () => {
    const all = Object.values(positions).flat();
    if (!all.length) return;
    let lons = all.map((p) => p[1]);
    const lats = all.map((p) => p[0]);
    let minLon = Math.min(...lons), maxLon = Math.max(...lons);
    proj.wrap = false;
    if (maxLon - minLon > 180) {
      const wrapped = lons.map((l) => (l < 0 ? l + 360 : l));
      const a = Math.min(...wrapped), b = Math.max(...wrapped);
      if (b - a < maxLon - minLon) { proj.wrap = true; minLon = a; maxLon = b; lons = wrapped; }
    }
    const minLat = Math.min(...lats), maxLat = Math.max(...lats);
    proj.lat0 = (minLat + maxLat) / 2;
    proj.lon0 = (minLon + maxLon) / 2;
    proj.k = Math.max(Math.cos(proj.lat0 * Math.PI / 180), 0.01);
    const spanX = Math.max((maxLon - minLon) * proj.k, proj.minSpan);
    const spanY = Math.max(maxLat - minLat, proj.minSpan);
    proj.scale = Math.min(Math.max(proj.w - 2 * proj.margin, 1) / spanX, Math.max(proj.h - 2 * proj.margin, 1) / spanY);
    Object.assign(picture.dataset, { lat0: fmt(proj.lat0, 7), lon0: fmt(proj.lon0, 7), k: fmt(proj.k, 9),
      scale: fmt(proj.scale, 3), wrap: proj.wrap ? "1" : "0" });
    for (const [vid, list] of Object.entries(positions)) {
      const xy = list.map(([lat, lon]) => project(lat, lon).map((v) => fmt(v, 1)));
      const line = document.getElementById("track-" + vid);
      if (line) line.setAttribute("points", xy.length > 1 ? xy.map((p) => p.join(",")).join(" ") : "");
      const g = document.getElementById("marker-" + vid);
      if (g && xy.length) {
        const [xs, ys] = xy[xy.length - 1];
        g.dataset.x = xs;
        g.dataset.y = ys;
        g.setAttribute("transform", "translate(" + xs + " " + ys + ")");
      }
    }
    // The scale bar and the corners' coordinates.
    const mpu = (Math.PI / 180 * 6371008.8) / proj.scale;
    const metres = niceFloor(mpu * proj.w / 4);
    const units = metres / mpu;
    const bar = document.getElementById("fleet-picture-scale");
    if (bar) {
      const [top, , right] = bar.querySelectorAll("line");
      const x1 = +top.getAttribute("x1");
      top.setAttribute("x2", fmt(x1 + units, 1));
      right.setAttribute("x1", fmt(x1 + units, 1));
      right.setAttribute("x2", fmt(x1 + units, 1));
      bar.querySelector("text").textContent = metres >= 1000 ? fmt(metres / 1000, 3) + " km" : fmt(metres, 3) + " m";
    }
    const nw = document.getElementById("fleet-picture-nw");
    const se = document.getElementById("fleet-picture-se");
    if (nw) nw.textContent = latLonText(...unproject(0, 0));
    if (se) se.textContent = latLonText(...unproject(proj.w, proj.h));
  };

  const marker = (vid) => {
    let g = document.getElementById("marker-" + vid);
    if (g || !picture) return g;
    // A vehicle that had no position when the page was rendered.
    const tracks = document.getElementById("fleet-picture-tracks");
    const markers = document.getElementById("fleet-picture-markers");
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("id", "track-" + vid);
    line.setAttribute("class", "track");
    line.dataset.vehicle = vid;
    line.setAttribute("points", "");
    tracks.appendChild(line);
    g = document.createElementNS(SVG, "g");
    g.setAttribute("id", "marker-" + vid);
    g.setAttribute("class", "marker offline");
    g.dataset.vehicle = vid;
    g.dataset.online = "false";
    const title = document.createElementNS(SVG, "title");
    title.textContent = vid;
    const c = document.createElementNS(SVG, "circle");
    c.setAttribute("r", "7");
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", "11");
    t.setAttribute("y", "4");
    t.textContent = vid;
    g.append(title, c, t);
    markers.appendChild(g);
    return g;
  };

  const markerTitle = (g) => {
    const t = g.querySelector("title");
    if (t) {
      t.textContent = g.dataset.vehicle + ": " + (g.dataset.online === "true" ? "online" : "offline") +
        (g.dataset.lat ? ", " + g.dataset.lat + ", " + g.dataset.lon : "");
    }
  };

  const moveMarker = (vid, lat, lon) => {
    if (!proj) return;
    const g = marker(vid);
    if (!g) return;
    const list = positions[vid] || (positions[vid] = []);
    const last = list[list.length - 1];
    if (last && last[0] === lat && last[1] === lon) return;
    list.push([lat, lon]);
    if (list.length > MAX_TRACK) list.splice(0, list.length - MAX_TRACK);
    g.dataset.lat = fmt(lat, 6);
    g.dataset.lon = fmt(lon, 6);
    markerTitle(g);
    const [x, y] = project(lat, lon);
    const edge = proj.margin / 2;
    if (x < edge || x > proj.w - edge || y < edge || y > proj.h - edge) {
      refit();
      return;
    }
    const xs = fmt(x, 1), ys = fmt(y, 1);
    g.dataset.x = xs;
    g.dataset.y = ys;
    g.setAttribute("transform", "translate(" + xs + " " + ys + ")");
    const line = document.getElementById("track-" + vid);
    if (line) {
      const pts = (line.getAttribute("points") || "").trim().split(/\s+/).filter(Boolean);
      pts.push(xs + "," + ys);
      line.setAttribute("points", pts.slice(-MAX_TRACK).join(" "));
    }
  };

  const setOnline = (vid, online) => {
    for (const f of fields(vid, "online")) {
      const span = f.querySelector(".status") || f;
      if (span.dataset.online === String(online)) continue;
      span.dataset.online = String(online);
      span.classList.toggle("online", online);
      span.classList.toggle("offline", !online);
      span.textContent = online ? "Online" : "Offline";
    }
    const g = document.getElementById("marker-" + vid);
    if (g) {
      g.dataset.online = String(online);
      g.classList.toggle("online", online);
      g.classList.toggle("offline", !online);
      markerTitle(g);
    }
    const count = document.getElementById("fleet-online-count");
    if (count) count.textContent = String(document.querySelectorAll('#fleet-vehicles [data-field="online"] [data-online="true"]').length);
  };

  const setText = (vid, name, text) => {
    for (const f of fields(vid, name)) if (f.textContent !== text) f.textContent = text;
  };

  const apply = (u) => {
    if (!u || typeof u.vehicle !== "string") return;
    const vid = u.vehicle;
    if (typeof u.online === "boolean") setOnline(vid, u.online);
    if (u.status) setText(vid, "status", u.status);
    if (u.last_seen) setText(vid, "last-seen", u.last_seen);
    if (typeof u.battery === "number") setText(vid, "battery", fmt(Math.round(u.battery), 0) + " %");
    if (u.mode || typeof u.armed === "boolean") {
      for (const f of fields(vid, "mode")) {
        if (u.mode) f.dataset.mode = u.mode;
        if (typeof u.armed === "boolean") f.dataset.armed = String(u.armed);
        let text = f.dataset.mode || "—";
        if (f.dataset.armed === "true") text += " (armed)";
        else if (f.dataset.armed === "false") text += " (disarmed)";
        if (f.textContent !== text) f.textContent = text;
      }
    }
    if (typeof u.lat === "number" && typeof u.lon === "number") {
      let text = fmt(u.lat, 6) + ", " + fmt(u.lon, 6);
      if (typeof u.alt === "number") text += " · " + fmt(u.alt, 1) + " m";
      setText(vid, "position", text);
      moveMarker(vid, u.lat, u.lon);
    }
  };

  // --- the stream, and polling while it is not open ---
  let es = null;
  let closedAt = 0;
  const connect = () => {
    es = new EventSource(live.dataset.liveUrl);
    setStatus("connecting", "Live updates: connecting…");
    es.addEventListener("open", () => setStatus("live", "Live updates: on."));
    es.addEventListener("vehicle", (ev) => {
      try { apply(JSON.parse(ev.data)); } catch (e) { /* a malformed event is skipped */ }
    });
    es.addEventListener("error", () => {
      if (es.readyState === EventSource.CLOSED) {
        closedAt = Date.now();
        setStatus("polling", "Live telemetry is unavailable; connection states refresh every few seconds.");
      } else {
        setStatus("connecting", "Live updates: reconnecting…");
      }
    });
  };

  const poll = () => {
    if (es && es.readyState === EventSource.OPEN) return;
    if (es && es.readyState === EventSource.CLOSED && Date.now() - closedAt > RECONNECT_MS) connect();
    fetch(live.dataset.statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : null))
      .then((body) => { if (body && Array.isArray(body.vehicles)) body.vehicles.forEach(apply); })
      .catch(() => {});
  };

  connect();
  setInterval(poll, POLL_MS);
  window.addEventListener("pagehide", () => { if (es) es.close(); });
})();
