// Session page: totals, emotion mix and the per-minute chart from /api/sessions/{id}.
"use strict";
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function chart(box, minutes) {
  const W = 1000, H = 300, L = 48, R = 12, T = 12, B = 30;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "chart" });
  const max = Math.max(1, ...minutes.map(m => m.faces));
  const n = Math.max(minutes.length, 1);
  const step = (W - L - R) / n, bw = Math.max(2, Math.min(60, step * 0.7));
  for (let k = 0; k <= 4; k++) {
    const y = T + (H - T - B) * (1 - k / 4);
    s.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#2a313c" }));
    const t = svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" }); t.textContent = Math.round(max * k / 4); s.append(t);
  }
  minutes.forEach((m, i) => {
    const x = L + step * i + (step - bw) / 2;
    let y = H - B;
    for (const n of ES.emotions) {
      const v = m.counts[n] || 0;
      if (!v) continue;
      const h = (H - T - B) * v / max;
      y -= h;
      const r = svg("rect", { x, y, width: bw, height: h, fill: ES.colors[n], class: "point", "data-emotion": n, "data-t": m.t });
      const tip = svg("title"); tip.textContent = `${m.minute} ${n}: ${v}`; r.append(tip);
      s.append(r);
    }
    if (n <= 24 || i % Math.ceil(n / 12) === 0) {
      const t = svg("text", { x: x + bw / 2, y: H - 10, "text-anchor": "middle" });
      t.textContent = new Date(m.t * 1000).toISOString().slice(11, 16); s.append(t);
    }
  });
  box.replaceChildren(s);
}

async function showSession() {
  await loadMeta();
  const sid = decodeURIComponent(location.pathname.split("/").pop());
  document.getElementById("sid").textContent = sid;
  document.getElementById("json").href = `/api/sessions/${encodeURIComponent(sid)}`;
  const agg = await (await fetch(`/api/sessions/${encodeURIComponent(sid)}`)).json();
  const dl = document.getElementById("totals");
  const when = ts => ts ? ts.replace("T", " ").slice(0, 19) + " UTC" : "-";
  const rows = [["faces", agg.faces], ["frames", agg.frames], ["tracks", agg.tracks],
    ["dominant", agg.dominant || "-"], ["duration", `${agg.duration_s} s`], ["streams", (agg.streams || []).join(", ")],
    ["first seen", when(agg.first_ts)], ["last seen", when(agg.last_ts)]];
  dl.replaceChildren(...rows.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, String(v)))));
  renderLabels(document.getElementById("labels"), agg.emotions);
  renderMix(document.getElementById("mix"), agg.emotions);
  chart(document.getElementById("chart"), agg.minutes);
  const tbody = document.querySelector("#tracks tbody");
  tbody.replaceChildren(...agg.track_list.map(t => el("tr", {},
    el("td", {}, t.stream_id), el("td", {}, `#${t.track_id}`), el("td", {}, String(t.faces)),
    el("td", {}, String(t.dwell_s)), el("td", {}, t.dominant || "-"))));
  document.body.dataset.loaded = "1";
}

showSession();
