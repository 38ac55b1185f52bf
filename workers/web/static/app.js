// The upload page: send files to POST /api/v1/jobs, poll each job, draw its verdict and figures.
"use strict";

const API = "/api/v1";
const POLL_MS = 500;
const body = document.body;
const maxBytes = parseFloat(body.dataset.uploadMaxMb) * 1024 * 1024;
const results = document.getElementById("results");
const message = document.getElementById("message");
const template = document.getElementById("card");

function token() {
  const input = document.getElementById("token");
  if (!input) return "";
  if (input.value) sessionStorage.setItem("deepscan-token", input.value);
  return input.value || sessionStorage.getItem("deepscan-token") || "";
}

function headers() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

function showError(text) {
  message.textContent = text;
  message.hidden = !text;
}

async function detail(response) {
  try {
    const data = await response.json();
    return typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
  } catch (e) {
    return response.statusText;
  }
}

function percent(p) {
  return (100 * p).toFixed(1) + " %";
}

function newCard(file, batch) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.filename = file.name;
  card.querySelector(".filename").textContent = file.name;
  setStatus(card, "uploading");
  batch.append(card);
  return card;
}

function setStatus(card, status) {
  const pill = card.querySelector(".status");
  pill.textContent = status;
  pill.className = "status pill " + status;
  card.dataset.status = status;
}

// Fetch a PNG with the token (an <img src> cannot send it) and show it; the figure's data-done is set once
// the picture and its caption are both final.
async function loadImage(img, url, figure, onDone) {
  figure.hidden = false;
  img.dataset.loaded = "loading";
  const finish = async (error) => { await onDone(error); figure.dataset.done = "true"; };
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) {
    img.dataset.loaded = "failed";
    await finish(await detail(response));
    return;
  }
  img.onload = () => { img.dataset.loaded = "true"; finish(null); };
  img.src = URL.createObjectURL(await response.blob());
}

function drawResult(card, job) {
  const r = job.result;
  card.dataset.mediaType = r.media_type;
  card.querySelector(".json").textContent = JSON.stringify(r, null, 2);
  if (r.label) {
    const verdict = card.querySelector(".verdict");
    verdict.hidden = false;
    const label = verdict.querySelector(".label");
    label.textContent = r.label === "fake" ? "Fake" : "Real";
    label.className = "label " + r.label;
    card.dataset.label = r.label;
    for (const side of ["real", "fake"]) {
      verdict.querySelector(".fill." + side).style.width = percent(r.confidence[side]).replace(" ", "");
      verdict.querySelector(".value-" + side).textContent = percent(r.confidence[side]);
    }
    const facts = [r.media_type, "P(fake) " + r.fake_probability.toFixed(3)];
    if (r.details && r.details.verdict_driven_by) facts.push("verdict driven by " + r.details.verdict_driven_by);
    if (r.media_type === "image") facts.push(r.faces.length + (r.faces.length === 1 ? " face" : " faces"));
    facts.push("analysed in " + job.timings.analysis_s.toFixed(1) + " s");
    verdict.querySelector(".facts").textContent = facts.join(" · ");
  } else {
    const reason = card.querySelector(".reason");
    reason.hidden = false;
    reason.innerHTML = "";
    const code = document.createElement("strong");
    code.className = "result-status";
    code.textContent = r.status;
    reason.append("No verdict: ", code, " · " + (r.reason || ""));
  }
  if (job.timeline_url) {
    const figure = card.querySelector(".timeline-figure");
    const audio = r.audio;
    figure.querySelector(".audio-verdict").textContent = !audio ? "no soundtrack scored"
      : audio.label ? "audio: " + audio.label + " (P(fake) " + audio.fake_probability.toFixed(3) + ", "
        + audio.windows + " windows)"
      : "audio: no verdict (" + audio.status + ": " + audio.reason + ")";
    loadImage(card.querySelector(".timeline"), job.timeline_url, figure, async () => {});
  }
  const wantExplanation = document.getElementById("explain").checked || job.explanation.status !== "available";
  if (job.explanation_url && wantExplanation) {
    const figure = card.querySelector(".explanation-figure");
    const caption = figure.querySelector(".explanation-caption");
    caption.textContent = "computing the explanation (LIME)…";
    loadImage(card.querySelector(".explanation"), job.explanation_url, figure, async (error) => {
      if (error) { caption.textContent = "no explanation: " + error; return; }
      const again = await (await fetch(job.url, { headers: headers() })).json();
      const e = again.explanation;
      const where = e.t_s === null || e.t_s === undefined ? "" : " at second " + e.t_s.toFixed(0);
      caption.textContent = "the face that drove the verdict" + where + ": red regions push towards fake, "
        + "blue towards real (LIME, " + e.num_samples + " samples, " + e.elapsed_s.toFixed(1) + " s)";
    });
  }
}

async function follow(card, created) {
  card.dataset.jobId = created.id;
  for (;;) {
    const response = await fetch(created.url, { headers: headers() });
    if (!response.ok) { setStatus(card, "failed"); showError(await detail(response)); return; }
    const job = await response.json();
    setStatus(card, job.status);
    if (job.status === "done") { drawResult(card, job); return; }
    if (job.status === "failed") {
      const reason = card.querySelector(".reason");
      reason.hidden = false;
      reason.textContent = "The server failed on this file: " + job.error;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function upload(files) {
  showError("");
  files = Array.from(files);
  if (!files.length) return;
  const total = files.reduce((sum, f) => sum + f.size, 0);
  if (total > maxBytes) {
    showError("These files come to " + (total / 1048576).toFixed(1) + " MB; the server takes at most "
      + body.dataset.uploadMaxMb + " MB per upload. Send fewer or smaller files.");
    return;
  }
  const batch = document.createElement("div");  // the newest upload on top, its files in order
  batch.className = "batch";
  results.prepend(batch);
  const cards = files.map((f) => newCard(f, batch));
  const form = new FormData();
  files.forEach((f) => form.append("file", f, f.name));
  form.append("explain", document.getElementById("explain").checked ? "always" : "flagged");
  let response;
  try {
    response = await fetch(API + "/jobs", { method: "POST", body: form, headers: headers() });
  } catch (e) {
    cards.forEach((c) => setStatus(c, "failed"));
    showError("The upload failed: " + e);
    return;
  }
  if (response.status !== 202) {
    cards.forEach((c) => setStatus(c, "failed"));
    showError("The server refused the upload (" + response.status + "): " + await detail(response));
    return;
  }
  let created = await response.json();
  if (!Array.isArray(created)) created = [created];
  created.forEach((job, i) => follow(cards[i], job));
}

const zone = document.getElementById("upload");
const picker = document.getElementById("files");
picker.addEventListener("change", () => { upload(picker.files); picker.value = ""; });
zone.addEventListener("submit", (event) => event.preventDefault());
for (const name of ["dragenter", "dragover"]) {
  zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  zone.addEventListener(name, () => zone.classList.remove("over"));
}
zone.addEventListener("drop", (event) => { event.preventDefault(); upload(event.dataTransfer.files); });

async function checkReady() {
  const ready = document.getElementById("ready");
  try {
    const health = await (await fetch("/healthz")).json();
    ready.textContent = health.ready ? "(ready)" : "(loading…)";
    if (!health.ready) setTimeout(checkReady, 1000);
  } catch (e) {
    ready.textContent = "(server unreachable)";
  }
}
checkReady();
