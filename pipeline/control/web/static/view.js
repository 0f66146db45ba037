// Live view: polls /api/streams once a second and keeps one card per stream.
"use strict";
const ES = { emotions: [], colors: {} };

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const kid of kids) e.append(kid);
  return e;
}

async function loadMeta() {
  const meta = await (await fetch("/api/meta")).json();
  ES.emotions = meta.emotions; ES.colors = meta.colors; ES.meta = meta;
  const legend = document.getElementById("legend");
  if (legend) {
    legend.replaceChildren(...ES.emotions.map(n => {
      const i = el("i"); i.style.background = ES.colors[n];
      return el("span", {}, i, n);
    }));
    if (meta.blur_faces) legend.append(el("span", {}, "· faces are blurred in this view"));
  }
}

function renderMix(box, counts) {
  const total = ES.emotions.reduce((s, n) => s + (counts[n] || 0), 0);
  box.replaceChildren(...ES.emotions.filter(n => counts[n]).map(n => {
    const d = el("div", { title: `${n} ${counts[n]}` });
    d.style.width = `${100 * counts[n] / total}%`; d.style.background = ES.colors[n];
    return d;
  }));
  return total;
}

function renderLabels(box, counts) {
  const total = ES.emotions.reduce((s, n) => s + (counts[n] || 0), 0) || 1;
  const shown = ES.emotions.filter(n => counts[n]).sort((a, b) => counts[b] - counts[a]);
  box.replaceChildren(...shown.map(n => {
    const i = el("i"); i.style.background = ES.colors[n];
    return el("span", { class: "emotion", "data-emotion": n }, i, `${n} ${Math.round(100 * counts[n] / total)}%`);
  }));
}

function card(s) {
  const img = el("img", { class: "preview", alt: `preview of ${s.id}`, src: `/streams/${encodeURIComponent(s.id)}/preview.mjpg` });
  const fig = (cls, label) => el("div", { class: `fig ${cls}` }, el("span", {}, "0"), el("label", {}, label));
  const c = el("section", { class: "card stream", "data-stream": s.id },
    img,
    el("div", { class: "body" },
      el("div", { class: "title" }, el("b", {}, s.id), el("span", { class: "state" }, s.state)),
      el("div", { class: "url" }, s.url || ""),
      el("div", { class: "figs" }, fig("fps", "frames/s"), fig("faces", "faces"), fig("tracks", "tracks"), fig("total", "faces seen")),
      el("div", { class: "mix" }),
      el("div", { class: "labels" }),
      el("div", { class: "session muted" })));
  return c;
}

function update(c, s) {
  const st = c.querySelector(".state");
  st.textContent = s.state; st.className = `state ${s.state}`;
  c.querySelector(".fps span").textContent = s.fps.toFixed(1);
  c.querySelector(".faces span").textContent = s.faces;
  c.querySelector(".tracks span").textContent = s.tracks;
  c.querySelector(".total span").textContent = s.faces_total;
  const n = renderMix(c.querySelector(".mix"), s.emotions_last_minute);
  renderLabels(c.querySelector(".labels"), s.emotions_last_minute);
  const sess = c.querySelector(".session");
  const link = ES.meta && ES.meta.redis && s.session_id
    ? el("a", { href: `/sessions/${encodeURIComponent(s.session_id)}` }, `session ${s.session_id} →`)
    : (s.session_id ? `session ${s.session_id}` : "");
  sess.replaceChildren(`${n} faces in the last minute · `, link);
}

async function poll() {
  try {
    const streams = await (await fetch("/api/streams")).json();
    const main = document.getElementById("streams");
    const seen = new Set();
    for (const s of streams) {
      seen.add(s.id);
      let c = main.querySelector(`[data-stream="${CSS.escape(s.id)}"]`);
      if (!c) { c = card(s); main.append(c); }
      update(c, s);
    }
    for (const c of main.querySelectorAll(".card")) if (!seen.has(c.dataset.stream)) c.remove();
    document.getElementById("empty").hidden = streams.length > 0;
    const fps = streams.reduce((a, s) => a + s.fps, 0);
    document.getElementById("summary").textContent = `${streams.length} stream(s) · ${fps.toFixed(1)} frames/s`;
  } catch (e) {
    document.getElementById("summary").textContent = "worker unreachable";
  }
}

if (document.getElementById("streams")) {
  loadMeta().then(() => { poll(); setInterval(poll, 1000); });
}
