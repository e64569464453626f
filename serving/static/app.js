// S4D demo page: upload a video or image, draw the emotion timeline (canvas) and per-class bars.
// Plain JS, no libraries, nothing fetched from outside this service.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0fb5c9", "#f032e6",
                   "#9a6324", "#808000", "#000075"];
  const color = (i) => (i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 47) % 360}, 70%, 45%)`);
  const VIDEO_EXT = /\.(mp4|m4v|avi|mov|webm|mkv|mpg|mpeg|wmv|flv|gif)$/i;
  const IMAGE_EXT = /\.(jpe?g|png|bmp|webp|tiff?)$/i;
  const SCORED = "#3457d5"; // the face the model scored
  const OTHER = "#ffffff"; // other faces found (images)
  let current = null; // the last answer, for redraws (resize, video time cursor)
  let objectUrl = null;

  function setState(state, message, isError) {
    document.body.dataset.state = state;
    const el = $("status");
    el.textContent = message || "";
    el.classList.toggle("error", !!isError);
  }

  function kindOf(file) {
    if (file.type.startsWith("image/") || IMAGE_EXT.test(file.name)) return "image";
    if (file.type.startsWith("video/") || VIDEO_EXT.test(file.name)) return "video";
    return "video"; // let the server sniff the bytes and say what it is
  }

  async function loadModelInfo() {
    try {
      const r = await fetch("/model");
      const m = await r.json();
      const metrics = m.metrics || {};
      const pick = (...paths) => {
        for (const path of paths) {
          const v = path.reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), metrics);
          if (typeof v === "number") return v;
        }
        return undefined;
      };
      const uar = pick(["test", "uar"], ["dynamic", "uar"], ["test", "dynamic", "uar"], ["val", "dynamic", "uar"]);
      $("model").textContent = `model ${m.tag} on ${m.device} (${m.dtype})` +
        (uar !== undefined ? ` - UAR ${uar.toFixed(3)}` : "");
    } catch (e) {
      $("model").textContent = "model info unavailable";
    }
  }

  async function analyze(file) {
    const kind = kindOf(file);
    const form = new FormData();
    form.append(kind, file, file.name);
    setState("busy", `Analysing ${file.name} (${(file.size / 1048576).toFixed(1)} MiB)...`);
    $("file").disabled = true;
    $("result").hidden = true;
    $("panels").hidden = true;
    const started = performance.now();
    let response, body;
    try {
      response = await fetch(`/predict_${kind}`, { method: "POST", body: form });
      body = await response.json();
    } catch (e) {
      $("file").disabled = false;
      setState("error", `The service did not answer: ${e}`, true);
      return;
    }
    $("file").disabled = false;
    if (!response.ok) {
      const code = body && body.code ? body.code : response.status;
      setState("error", `${code}: ${body && body.error ? body.error : "request failed"}`, true);
      return;
    }
    current = body;
    showMedia(file, kind);
    render(body);
    setState("done", `Answered in ${((performance.now() - started) / 1000).toFixed(2)} s.`);
  }

  function showMedia(file, kind) {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = URL.createObjectURL(file);
    $("player").hidden = kind !== "video";
    $("still").hidden = kind !== "image";
    if (kind === "video") $("player").src = objectUrl;
    else $("still").src = objectUrl;
  }

  // ------------------------------------------------------------------ face boxes over the media
  // The part of the element the picture fills (object-fit: contain letterboxes it).
  function contentRect(el, naturalW, naturalH) {
    const w = el.clientWidth, h = el.clientHeight;
    const scale = Math.min(w / naturalW, h / naturalH);
    return { x: (w - naturalW * scale) / 2, y: (h - naturalH * scale) / 2, scale };
  }

  // The sampled frame nearest to time t (video answers hold one box per sampled frame).
  function faceAt(r, t) {
    let best = null;
    for (const f of r.faces) if (best === null || Math.abs(f.t - t) < Math.abs(best.t - t)) best = f;
    return best;
  }

  function drawBoxes(r) {
    const canvas = $("overlay");
    const el = r.kind === "video" ? $("player") : $("still");
    const dpr = window.devicePixelRatio || 1;
    const w = el.clientWidth, h = el.clientHeight;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    canvas.style.width = `${w}px`;
    canvas.style.height = `${h}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const size = r.kind === "video" ? r.video : r.image;
    if (!w || !h || !size.width) return;
    const fit = contentRect(el, size.width, size.height);
    const boxes = []; // [box, scored]
    if (r.kind === "image") {
      const scored = JSON.stringify(r.face.box);
      for (const b of r.face.boxes || []) if (JSON.stringify(b) !== scored) boxes.push([b, false]);
      boxes.push([r.face.box, true]);
    } else {
      const f = faceAt(r, r.kind === "video" ? $("player").currentTime || 0 : 0);
      if (f && f.box) boxes.push([f.box, true]);
    }
    let drawn = 0;
    for (const [b, scored] of boxes) {
      if (!b) continue;
      const x = fit.x + b[0] * fit.scale, y = fit.y + b[1] * fit.scale;
      const bw = (b[2] - b[0]) * fit.scale, bh = (b[3] - b[1]) * fit.scale;
      ctx.lineWidth = scored ? 3 : 1.5;
      ctx.strokeStyle = scored ? SCORED : OTHER;
      ctx.setLineDash(scored ? [] : [5, 4]);
      ctx.strokeRect(x, y, bw, bh);
      if (scored) {
        ctx.setLineDash([]);
        ctx.font = "12px system-ui, sans-serif";
        const text = `scored: ${r.label}`;
        const tw = ctx.measureText(text).width + 8;
        ctx.fillStyle = SCORED;
        ctx.fillRect(x, Math.max(0, y - 17), tw, 17);
        ctx.fillStyle = "#ffffff";
        ctx.textBaseline = "top";
        ctx.textAlign = "left";
        ctx.fillText(text, x + 4, Math.max(0, y - 17) + 2);
      }
      drawn += 1;
    }
    canvas.dataset.boxes = String(drawn);
    const others = r.kind === "image" ? Math.max(0, (r.face.boxes || []).length - 1) : 0;
    $("boxnote").textContent = r.kind === "image"
      ? `Blue: the face the model scored` + (others ? `; dashed: ${others} other face(s) found.` : ".")
      : "Blue: the tracked face the model scores, at the nearest sampled frame.";
  }

  function pct(p) { return `${(100 * p).toFixed(1)}%`; }

  function render(r) {
    $("result").hidden = false;
    $("panels").hidden = false;
    $("label").textContent = r.label;
    $("prob").textContent = pct(r.top_probability);
    const badge = $("uncertain");
    badge.textContent = r.uncertain ? `uncertain (< ${pct(r.threshold)})` : "confident";
    badge.classList.toggle("sure", !r.uncertain);
    const model = r.model ? `${r.model.tag}` : "";
    if (r.kind === "video") {
      const v = r.video;
      $("details").textContent = `video ${v.width}x${v.height}, ${v.duration.toFixed(1)} s, ` +
        `${v.segments_with_face}/${v.segments} segments with a face - ${model}`;
    } else {
      const f = r.face;
      $("details").textContent = `image ${r.image.width}x${r.image.height}, ` +
        (f.whole_image ? "whole picture used as the face" : `largest of ${f.faces_found} face(s)`) + ` - ${model}`;
    }
    drawBars(r);
    const media = r.kind === "video" ? $("player") : $("still");
    if (r.kind === "video") media.addEventListener("loadeddata", () => drawBoxes(r), { once: true });
    else if (media.complete && media.naturalWidth) drawBoxes(r);
    else media.addEventListener("load", () => drawBoxes(r), { once: true });
    $("timeline-card").hidden = r.kind !== "video";
    if (r.kind === "video") drawTimeline(r, null);
  }

  function drawBars(r) {
    const box = $("bars");
    box.textContent = "";
    r.labels.forEach((name, i) => {
      const p = r.probabilities[name];
      const row = document.createElement("div");
      row.className = "row";
      row.dataset.label = name;
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name;
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = pct(p);
      fill.style.background = color(i);
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = pct(p);
      row.append(label, track, value);
      box.appendChild(row);
    });
  }

  function drawTimeline(r, cursor) {
    const canvas = $("chart");
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600, height = canvas.clientHeight || 260;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const m = { left: 44, right: 12, top: 10, bottom: 28 };
    const w = width - m.left - m.right, h = height - m.top - m.bottom;
    const duration = Math.max(r.video.duration, r.timeline.length ? r.timeline[r.timeline.length - 1].t_end : 0, 1e-3);
    const x = (t) => m.left + (t / duration) * w;
    const y = (p) => m.top + (1 - p) * h;

    // grid and axes
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#667085";
    ctx.strokeStyle = "#e4e7ec";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const p of [0, 0.25, 0.5, 0.75, 1]) {
      ctx.beginPath(); ctx.moveTo(m.left, y(p)); ctx.lineTo(m.left + w, y(p)); ctx.stroke();
      ctx.fillText(p.toFixed(2), m.left - 6, y(p));
    }
    const step = niceStep(duration / 8);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = 0; t <= duration + 1e-9; t += step) {
      ctx.beginPath(); ctx.moveTo(x(t), m.top + h); ctx.lineTo(x(t), m.top + h + 4); ctx.stroke();
      ctx.fillText(`${+t.toFixed(2)} s`, x(t), m.top + h + 7);
    }
    // segments without a face: shaded
    ctx.fillStyle = "rgba(102, 112, 133, 0.15)";
    for (const s of r.timeline) if (!s.face) ctx.fillRect(x(s.t_start), m.top, x(s.t_end) - x(s.t_start), h);
    // uncertainty threshold
    ctx.setLineDash([4, 4]);
    ctx.strokeStyle = "#98a2b3";
    ctx.beginPath(); ctx.moveTo(m.left, y(r.threshold)); ctx.lineTo(m.left + w, y(r.threshold)); ctx.stroke();
    ctx.setLineDash([]);
    // one step line per class: the segment's probability over the segment, joined where segments touch
    ctx.lineWidth = 2.5;
    r.labels.forEach((name, i) => {
      ctx.strokeStyle = color(i);
      ctx.beginPath();
      let open = false;
      for (const s of r.timeline) {
        if (!s.face) { open = false; continue; }
        const p = s.probabilities[name];
        if (open) ctx.lineTo(x(s.t_start), y(p)); else ctx.moveTo(x(s.t_start), y(p));
        ctx.lineTo(x(s.t_end), y(p));
        open = true;
      }
      ctx.stroke();
    });
    // playback cursor
    if (cursor !== null && cursor !== undefined) {
      ctx.strokeStyle = "#1d2330";
      ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x(cursor), m.top); ctx.lineTo(x(cursor), m.top + h); ctx.stroke();
    }
    ctx.strokeStyle = "#98a2b3";
    ctx.lineWidth = 1;
    ctx.strokeRect(m.left, m.top, w, h);

    const legend = $("legend");
    legend.textContent = "";
    r.labels.forEach((name, i) => {
      const item = document.createElement("span");
      item.style.setProperty("--c", color(i));
      item.textContent = name;
      legend.appendChild(item);
    });
    const missing = r.timeline.filter((s) => !s.face).length;
    $("chart-note").textContent = `${r.timeline.length} segments` +
      (missing ? `, ${missing} without a face (shaded)` : "") + "; dashed line: uncertainty threshold.";
    canvas.dataset.rendered = String(r.timeline.length);
  }

  function niceStep(raw) {
    const power = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-6))));
    for (const f of [1, 2, 5, 10]) if (raw <= f * power) return f * power;
    return 10 * power;
  }

  // wiring
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) analyze(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) analyze(e.dataTransfer.files[0]);
  });
  $("player").addEventListener("timeupdate", () => {
    if (current && current.kind === "video") {
      drawTimeline(current, $("player").currentTime);
      drawBoxes(current);
    }
  });
  window.addEventListener("resize", () => {
    if (!current) return;
    if (current.kind === "video") drawTimeline(current, null);
    drawBoxes(current);
  });
  loadModelInfo();
})();
