// The page's whole logic: send the picked image to /v1/predict twice (JSON for the table and
// the download, PNG for the overlay; the server may batch the two), show both, and send again
// when the score threshold moves. No build step, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
let image = null;      // the File picked or dropped
let generation = 0;    // answers to an older request are ignored
let debounce = null;

fetch("/v1/model").then((r) => r.json()).then((info) => {
  $("model-name").textContent = info.name;
  $("score").value = info.defaults.score_threshold;
  $("score-value").textContent = Number(info.defaults.score_threshold).toFixed(2);
}).catch(() => { $("model-name").textContent = "(unavailable)"; });

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function request(format, threshold) {
  const url = `/v1/predict?format=${format}&score_threshold=${threshold}`;
  const response = await fetch(url, {
    method: "POST", body: image,
    headers: { "Content-Type": image.type || "application/octet-stream" },
  });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = JSON.stringify((await response.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return format === "json" ? response.text() : response.blob();
}

function showTable(result) {
  const body = $("detections").querySelector("tbody");
  body.replaceChildren();
  result.detections.forEach((det, i) => {
    const row = body.insertRow();
    const cells = [i + 1, det.class_name, det.score.toFixed(3), det.box.map((v) => v.toFixed(1)).join(", ")];
    for (const value of cells) row.insertCell().textContent = value;
  });
  $("detections").hidden = false;
}

async function run() {
  if (!image) return;
  const mine = ++generation;
  const threshold = $("score").value;
  setStatus("running…");
  try {
    const [text, png] = await Promise.all([request("json", threshold), request("png", threshold)]);
    if (mine !== generation) return;
    const result = JSON.parse(text);
    const overlay = $("overlay");
    if (overlay.src) URL.revokeObjectURL(overlay.src);
    overlay.src = URL.createObjectURL(png);
    overlay.style.display = "block";
    showTable(result);
    const link = $("download");
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    link.hidden = false;
    setStatus(`${result.detections.length} detections in ${result.timing_ms.total.toFixed(0)} ms`);
  } catch (error) {
    if (mine === generation) setStatus(String(error.message || error), true);
  }
}

function pick(file) {
  if (!file) return;
  image = file;
  run();
}

$("file").addEventListener("change", (e) => pick(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  pick(e.dataTransfer.files[0]);
});
$("score").addEventListener("input", () => {
  $("score-value").textContent = Number($("score").value).toFixed(2);
  clearTimeout(debounce);
  debounce = setTimeout(run, 250);
});
