// esrt demo page: upload one image, poll its job, compare before/after, download. No libraries, no network
// beyond this server (the server's Content-Security-Policy forbids it).
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 250;
let config = null;
let lastFile = null;
let currentJob = null; // id of the job the page shows; answers about other jobs are ignored

function setState(state) {
  document.body.dataset.state = state; // loading | idle | uploading | queued | running | done | error
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").hidden = true;
  setState("error");
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function megabytes(bytes) {
  return (bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0);
}

async function loadConfig() {
  try {
    const response = await fetch("/api/config");
    config = await response.json();
  } catch (err) {
    showError("Cannot reach the demo server. Is `esrt demo` still running?");
    return;
  }
  const scale = $("scale");
  for (const s of config.scales) {
    const option = new Option(`×${s}`, String(s));
    scale.add(option);
  }
  scale.value = String(config.scales.includes(4) ? 4 : config.scales[config.scales.length - 1]);
  const mp = (config.max_pixels / 1e6).toFixed(1);
  $("limits").textContent = `PNG, JPEG, WebP, BMP or TIFF, up to ${megabytes(config.max_upload_bytes)} MB and ${mp} megapixels`;
  $("model-info").textContent = `esrt ${config.version} · ${config.device} · weights for ×${config.scales.join(", ×")}`;
  setState("idle");
}

async function upload(file) {
  clearError();
  $("result").hidden = true; // the page shows one image: the new one, or its error
  lastFile = file;
  $("again").disabled = false;
  if (!config) {
    showError("The page has not finished loading; try again.");
    return;
  }
  if (file.size > config.max_upload_bytes) {
    showError(`${file.name}: ${megabytes(file.size)} MB is larger than the limit of ${megabytes(config.max_upload_bytes)} MB.`);
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("scale", $("scale").value);
  form.append("precision", $("precision").value);
  form.append("tta", $("tta").checked ? "true" : "false");
  form.append("exact", $("exact").checked ? "true" : "false");
  currentJob = null;
  setState("uploading");
  showStatus(null, `Uploading ${file.name}…`);
  let response, body;
  try {
    response = await fetch("/api/jobs", { method: "POST", body: form });
  } catch (err) {
    showError("Cannot reach the demo server. Is `esrt demo` still running?");
    return;
  }
  try {
    body = await response.json();
  } catch (err) {
    body = { error: `The server answered ${response.status} ${response.statusText}.` };
  }
  if (!response.ok) {
    showError(body.error || `The server answered ${response.status}.`);
    return;
  }
  currentJob = body.id;
  track(body);
}

function showStatus(progress, text) {
  $("status").hidden = false;
  if (progress === null) $("progress").removeAttribute("value"); // indeterminate: busy, amount unknown
  else $("progress").value = progress;
  $("status-text").textContent = text;
}

function track(job) {
  if (job.id !== currentJob) return;
  setState(job.state);
  const what = `${job.name} (${job.input_size.join("×")} → ${job.output_size.join("×")})`;
  if (job.state === "queued") {
    showStatus(0, `${what}: waiting, ${job.ahead} image${job.ahead === 1 ? "" : "s"} ahead`);
  } else if (job.state === "running") {
    const pct = Math.floor(job.progress * 100);
    const doing = job.message === "saving" ? "saving" : "upscaling";
    showStatus(job.progress > 0 ? job.progress : null, `${what}: ${doing}…${job.progress > 0 ? ` ${pct}%` : ""}`);
  } else if (job.state === "error") {
    showError(`${job.name}: ${job.message}`);
    return;
  } else if (job.state === "done") {
    showResult(job);
    return;
  }
  setTimeout(() => poll(job.id), POLL_MS);
}

async function poll(id) {
  if (id !== currentJob) return;
  try {
    const response = await fetch(`/api/jobs/${id}`);
    const body = await response.json();
    if (!response.ok) {
      showError(body.error || `The server answered ${response.status}.`);
      return;
    }
    track(body);
  } catch (err) {
    showError("Lost the connection to the demo server. Is `esrt demo` still running?");
  }
}

function loadImage(img, url) {
  return new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error(`cannot load ${url}`));
    img.src = url;
  });
}

async function showResult(job) {
  showStatus(1, `${job.name}: done in ${job.seconds} s`);
  try {
    await Promise.all([loadImage($("before"), job.input_url), loadImage($("after"), job.result_url)]);
  } catch (err) {
    showError(err.message);
    return;
  }
  if (job.id !== currentJob) return;
  const [w, h] = job.output_size;
  $("result").hidden = false;
  // small results are shown larger; the whole picture fits in the window
  const width = Math.min($("result").clientWidth, Math.max(w, 512), (0.75 * window.innerHeight * w) / h);
  $("compare").style.width = `${width}px`;
  $("compare").style.aspectRatio = `${w} / ${h}`;
  $("after-tag").textContent = `ESRT ×${job.scale}`;
  const download = $("download");
  download.href = job.download_url;
  download.download = job.download_name;
  $("result-info").textContent =
    `${job.name}: ${job.input_size.join("×")} → ${job.output_size.join("×")} · ${job.precision}` +
    `${job.exact ? " exact" : ""}${job.tta ? " + TTA" : ""} · ${job.seconds} s`;
  $("status").hidden = true;
  setSlider(Number($("slider").value));
  setState("done");
}

function setSlider(percent) {
  $("compare").style.setProperty("--pos", `${percent}%`);
}

function setup() {
  const drop = $("drop");
  const file = $("file");
  file.addEventListener("change", () => {
    if (file.files.length) upload(file.files[0]);
    file.value = ""; // picking the same file again starts a new job
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      file.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  // a file dropped beside the drop zone must not make the browser leave the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.files][0];
    if (item) upload(item);
  });
  $("again").addEventListener("click", () => lastFile && upload(lastFile));
  $("slider").addEventListener("input", (e) => setSlider(Number(e.target.value)));
  loadConfig();
}

setup();
