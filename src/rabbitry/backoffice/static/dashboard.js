// The dashboard's live charts: polls dashboard.json (the server keeps the last minutes, so a
// page opened now starts with them) and draws each chart with uPlot. Every name from the
// server goes into the page as text (textContent), never as markup; no inline script or style
// attribute (the Content-Security-Policy allows neither).
"use strict";

(() => {
  const live = document.getElementById("live");
  if (!live || typeof uPlot === "undefined") return;
  const source = live.dataset.source;
  const status = document.getElementById("live-status");
  const problems = document.getElementById("live-problems");
  const palette = ["#c2410c", "#2563eb", "#15803d", "#7c3aed", "#b45309", "#0891b2",
    "#be185d", "#4d7c0f", "#1d4ed8", "#9f1239", "#0f766e", "#6b7280"];
  const charts = new Map(); // chart name -> {plot, names}

  function lines(doc, name) {
    const value = doc[name];
    return value && typeof value === "object" ? value : {};
  }

  function latest(values) {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
    return null;
  }

  function figure(value, unit) {
    if (value === null || value === undefined) return "–";
    const shown = Number.isInteger(value) ? String(value) : value.toFixed(1);
    return unit ? shown + unit : shown;
  }

  function draw(box, doc) {
    const name = box.dataset.chart;
    const unit = box.dataset.unit || "";
    const series = lines(doc, name);
    const names = Object.keys(series).sort();
    let holder = box.querySelector(".plot");
    if (!holder) {
      holder = document.createElement("div");
      holder.className = "plot";
      box.appendChild(holder);
    }
    const known = charts.get(name);
    const data = [doc.t, ...names.map((n) => series[n])];
    if (!known || known.names.join("\n") !== names.join("\n")) {
      if (known) known.plot.destroy();
      const options = {
        width: Math.max(240, holder.clientWidth || box.clientWidth - 20),
        height: 150,
        legend: { show: false },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
        axes: [{ stroke: "#5d6878" }, { stroke: "#5d6878", size: 48 }],
        series: [{}, ...names.map((n, i) => ({
          label: n, stroke: palette[i % palette.length], width: 1.5, spanGaps: false,
        }))],
      };
      charts.set(name, { plot: new uPlot(options, data, holder), names });
    } else {
      known.plot.setData(data);
    }
    let list = box.querySelector("ul.latest");
    if (!list) {
      list = document.createElement("ul");
      list.className = "latest";
      box.appendChild(list);
    }
    const items = names.map((n, i) => {
      const item = document.createElement("li");
      item.dataset.line = n;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = palette[i % palette.length];
      const label = document.createElement("span");
      label.textContent = n + " ";
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = figure(latest(series[n]), unit);
      item.append(swatch, label, value);
      return item;
    });
    if (!items.length) {
      const quiet = document.createElement("li");
      quiet.className = "quiet";
      quiet.textContent = "nothing to show yet";
      items.push(quiet);
    }
    list.replaceChildren(...items);
  }

  function gateways(doc) {
    const body = document.querySelector("#gateways tbody");
    const sockets = (doc.gateways && doc.gateways.sockets) || {};
    const rooms = (doc.gateways && doc.gateways.rooms) || {};
    const names = Object.keys(sockets).sort();
    if (!names.length) return;
    body.replaceChildren(...names.map((n) => {
      const row = document.createElement("tr");
      row.dataset.gateway = n;
      for (const [text, cls] of [[n, ""], [String(sockets[n]), "num sockets"], [String(rooms[n] ?? 0), "num rooms"]]) {
        const cell = document.createElement("td");
        if (cls) cell.className = cls;
        cell.textContent = text;
        row.appendChild(cell);
      }
      return row;
    }));
  }

  function table(doc) {
    // The queues table below the charts: its figures follow the latest reading too.
    for (const row of document.querySelectorAll("#queues tr[data-queue]")) {
      const name = row.dataset.queue;
      for (const [chart, cls] of [["depth", "depth"], ["consumers", "consumers"]]) {
        const values = lines(doc, chart)[name];
        const cell = row.querySelector("td." + cls);
        if (values && cell && latest(values) !== null) cell.textContent = String(latest(values));
      }
      const dead = lines(doc, "dead_letters")[name];
      const link = row.querySelector("td.dead a");
      if (dead && link && latest(dead) !== null) link.textContent = String(latest(dead));
    }
  }

  function cards(doc) {
    const sum = (series) => Object.values(series).reduce((total, v) => total + (latest(v) || 0), 0);
    const pending = document.getElementById("pending-total");
    const dead = document.getElementById("dead-total");
    if (pending && Object.keys(lines(doc, "outbox")).length) pending.textContent = String(sum(lines(doc, "outbox")));
    if (dead && Object.keys(lines(doc, "dead_letters")).length) dead.textContent = String(sum(lines(doc, "dead_letters")));
  }

  async function poll() {
    let delay = 5000;
    try {
      const response = await fetch(source, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {
        window.location.assign(source.replace(/\/dashboard\.json$/, "/login"));
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const doc = await response.json();
      delay = Math.max(1000, doc.interval * 1000);
      for (const box of live.querySelectorAll("figure.chart")) draw(box, doc);
      gateways(doc);
      table(doc);
      cards(doc);
      const when = doc.t.length ? new Date(doc.t[doc.t.length - 1] * 1000).toLocaleTimeString() : "–";
      status.textContent = `${doc.t.length} readings, every ${doc.interval} s; last at ${when}`;
      problems.hidden = !doc.problems.length;
      problems.textContent = doc.problems.join(" · ");
      live.dataset.readings = String(doc.t.length);
    } catch (err) {
      status.textContent = "cannot read the figures: " + err.message;
    }
    window.setTimeout(poll, delay);
  }

  window.addEventListener("resize", () => {
    for (const [name, chart] of charts) {
      const box = live.querySelector(`figure[data-chart="${name}"] .plot`);
      if (box) chart.plot.setSize({ width: Math.max(240, box.clientWidth), height: 150 });
    }
  });
  poll();
})();
