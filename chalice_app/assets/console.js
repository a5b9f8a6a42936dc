// droptrain's console: the REST API's JSON routes, shown. Everything user-supplied or read from the
// API goes into the page as text (textContent), never as HTML. The API key, where the stage needs
// one, is typed by the user and kept in this tab's sessionStorage only.
"use strict";

const KEY = "droptrain-api-key";
const REFRESH_MS = 4000;
let refreshTimer = null;
let openRun = null;
let errorWords = {};  // code → what it means, from the API's own description (openapi.json)

function $(id) { return document.getElementById(id); }

function el(tag, text, attributes) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

// Paths relative to the page, so that the console works under API Gateway's stage path too.
function url(path) {
  const here = location.pathname.endsWith("/") ? "" : location.pathname.split("/").pop() + "/";
  return here + path;
}

async function api(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers["x-api-key"] = key;
  let response;
  try {
    response = await fetch(url(path), Object.assign({}, options || {}, { headers: headers }));
  } catch (error) {
    return { ok: false, status: 0, body: { error: { code: "offline", message: "the API cannot be reached: " + error.message } } };
  }
  let body = null;
  try { body = await response.json(); } catch (error) { body = { error: { code: "bad_answer", message: "the API answered " + response.status + " with no JSON" } }; }
  return { ok: response.ok, status: response.status, body: body };
}

function problem(answer) {
  const error = (answer.body && answer.body.error) || {};
  const words = {
    401: "this stage needs an API key: type it above",
    403: "the API key was refused: check it above",
    413: "the image is too large",
    415: "send a JPEG or PNG image",
  };
  const meaning = errorWords[error.code] ? " (" + errorWords[error.code] + ")" : "";
  return (words[answer.status] ? words[answer.status] + " — " : "") + (error.message || ("error " + answer.status)) + meaning;
}

function say(id, text, kind) {
  const node = $(id);
  node.textContent = text;
  node.className = kind || "";
}

// "0.0015120618943" reads as 0.00151; whole numbers and words stay as they are.
function short(value) {
  const number = Number(value);
  return value !== "" && Number.isFinite(number) && !Number.isInteger(number) ? String(Number(number.toPrecision(3))) : String(value);
}

function fixed(value, digits) {
  return typeof value === "number" ? value.toFixed(digits === undefined ? 3 : digits) : (value === null || value === undefined ? "–" : String(value));
}

// -- Try it ------------------------------------------------------------------------------------

async function loadProjects() {
  const answer = await api("projects");
  const select = $("project");
  clear(select);
  if (!answer.ok) {
    say("predict-status", problem(answer), "error");
    say("versions-status", problem(answer), "error");
    return [];
  }
  const projects = answer.body.projects;
  for (const project of projects) {
    select.appendChild(el("option", project.project + (project.serving ? "" : " (nothing deployed yet)"), { value: project.project }));
  }
  if (!projects.length) say("predict-status", "No project yet: upload a dataset, and its model appears here once deployed.");
  return projects;
}

async function predict(file) {
  if (!file) return;
  const project = $("project").value;
  if (!project) { say("predict-status", "No project to ask: upload a dataset first.", "error"); return; }
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.alt = "the image sent: " + file.name;
  preview.hidden = false;
  const heatmap = $("heatmap");
  heatmap.hidden = true;
  heatmap.removeAttribute("src");
  clear($("predictions"));
  say("predict-status", "Asking " + project + "…");
  const type = file.type === "image/png" ? "image/png" : (file.type === "image/jpeg" ? "image/jpeg" : file.type || "application/octet-stream");
  const floor = $("min-confidence").value.trim();
  const query = "?top_k=5" + ($("explain").checked ? "&explain=true" : "") + (floor ? "&min_confidence=" + encodeURIComponent(floor) : "");
  const answer = await api("predict/" + encodeURIComponent(project) + query, { method: "POST", headers: { "Content-Type": type }, body: file });
  if (!answer.ok) { say("predict-status", problem(answer), "error"); return; }
  const best = answer.body.predictions[0];
  if (answer.body.abstained) {
    say("predict-status", "Not sure: model " + answer.body.model + "'s best guess, " + best.label + ", is below its confidence threshold.", "warn");
  } else {
    say("predict-status", "Model " + answer.body.model + " says:", "ok");
  }
  const explanation = answer.body.explanation;
  if (explanation) {
    heatmap.src = "data:image/png;base64," + explanation.heatmap_png;
    heatmap.alt = "where the evidence for " + best.label + " lies (Grad-CAM, " + explanation.layer + "): brightest at x " + explanation.peak[0] + ", y " + explanation.peak[1];
    heatmap.hidden = false;
  }
  for (const prediction of answer.body.predictions) {
    const item = el("li");
    const label = el("span", prediction.label, { class: "label" });
    const percent = el("span", " " + (prediction.probability * 100).toFixed(1) + "%");
    const bar = el("progress", null, { max: "1", value: String(prediction.probability), "aria-label": prediction.label + " probability" });
    item.append(label, percent, bar);
    $("predictions").appendChild(item);
  }
}

function wireTryIt() {
  for (const id of ["image", "camera"]) {
    $(id).addEventListener("change", (event) => predict(event.target.files[0]));
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    predict(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("image").click(); } });
}

// -- Runs --------------------------------------------------------------------------------------

async function loadRuns() {
  const answer = await api("runs");
  if (!answer.ok) { say("runs-status", problem(answer), "error"); return; }
  const runs = answer.body.runs;
  say("runs-status", runs.length ? runs.length + (runs.length === 1 ? " run" : " runs") : "No run yet.");
  const body = $("runs-table").tBodies[0];
  clear(body);
  for (const run of runs) {
    const row = el("tr");
    const open = el("button", run.run_id, { class: "link", type: "button", "data-run": run.run_id });
    open.addEventListener("click", () => showRun(run.run_id));
    const cell = el("td");
    cell.appendChild(open);
    row.append(cell, el("td", run.project), el("td", run.state), el("td", run.started_at || "–"), el("td", run.events.join(" → ")));
    body.appendChild(row);
  }
  schedule(runs.some((r) => r.state === "in progress"));
}

function schedule(moving) {
  clearTimeout(refreshTimer);
  if (moving) {
    refreshTimer = setTimeout(async () => { await loadRuns(); if (openRun) await showRun(openRun, true); }, REFRESH_MS);
  }
}

function table(id, rows) {
  const body = $(id).tBodies[0];
  clear(body);
  for (const cells of rows) {
    const row = el("tr");
    for (const cell of cells.values) row.appendChild(el("td", cell.text, cell.numeric ? { class: "num" } : {}));
    if (cells.className) row.className = cells.className;
    body.appendChild(row);
  }
}

function describeEvent(message) {
  const detail = message.detail || {};
  const words = detail.reason || (detail.reasons && detail.reasons.join("; ")) || detail.action || "";
  return message.event + " — " + (message.status || "") + (words ? ": " + words : "");
}

async function showRun(runId, quiet) {
  openRun = runId;
  const answer = await api("runs/" + encodeURIComponent(runId));
  const article = $("run");
  if (!answer.ok) { if (!quiet) say("runs-status", problem(answer), "error"); return; }
  const run = answer.body;
  article.hidden = false;
  $("run-title").textContent = "Run " + run.run_id;
  $("run-state").textContent = "Project " + run.project + " · " + run.state;
  const timeline = $("timeline");
  clear(timeline);
  for (const message of run.timeline) {
    const item = el("li", (message.time || "") + "  " + describeEvent(message));
    if (/(failed|rejected|held)$/.test(message.event)) item.className = "bad";
    timeline.appendChild(item);
  }
  const trials = (run.tuning && run.tuning.trials) || [];
  table("trials", trials.map((t) => ({
    className: t.best ? "best" : "",
    values: [{ text: t.name }, { text: t.status + (t.failure_reason ? " (" + t.failure_reason + ")" : "") },
             { text: Object.entries(t.hyperparameters).map(([k, v]) => k + "=" + short(v)).join(", ") }, { text: fixed(t.objective, 4), numeric: true }],
  })));
  const metrics = $("metrics");
  clear(metrics);
  for (const [name, value] of Object.entries((run.final && run.final.metrics) || {})) {
    metrics.append(el("dt", name), el("dd", fixed(value, 4)));
  }
  const evaluation = run.evaluation;
  table("per-class", evaluation ? evaluation.classes.map((name) => {
    const c = evaluation.per_class[name];
    return { values: [{ text: name }, { text: fixed(c.precision), numeric: true }, { text: fixed(c.recall), numeric: true },
                      { text: fixed(c.f1), numeric: true }, { text: c.support, numeric: true }] };
  }) : []);
  confusion(evaluation);
  const rules = $("rules");
  clear(rules);
  for (const verdict of run.rules || []) {
    rules.appendChild(el("li", verdict.rule + ": " + verdict.status + (verdict.message ? " — " + verdict.message : ""), verdict.status === "IssuesFound" ? { class: "bad" } : {}));
  }
  const link = $("report-link");
  link.hidden = !run.report;
  if (run.report) link.href = url(run.report);
  schedule(run.state === "in progress");
}

function confusion(evaluation) {
  const matrix = $("confusion");
  clear(matrix.tHead);
  clear(matrix.tBodies[0]);
  if (!evaluation || !evaluation.confusion_matrix) return;
  const head = el("tr");
  head.appendChild(el("th", "true \\ predicted", { scope: "col" }));
  for (const name of evaluation.classes) head.appendChild(el("th", name, { scope: "col" }));
  matrix.tHead.appendChild(head);
  evaluation.confusion_matrix.forEach((counts, i) => {
    const row = el("tr");
    row.appendChild(el("th", evaluation.classes[i], { scope: "row" }));
    const total = counts.reduce((a, b) => a + b, 0) || 1;
    counts.forEach((count, j) => {
      const cell = el("td", count);
      const share = count / total;
      // Diagonal in green, confusions in red, as strong as their share of the true class.
      cell.style.backgroundColor = i === j ? "rgba(26, 107, 48, " + (0.1 + 0.5 * share) + ")" : (count ? "rgba(164, 22, 26, " + (0.1 + 0.6 * share) + ")" : "");
      row.appendChild(cell);
    });
    matrix.tBodies[0].appendChild(row);
  });
}

// -- Versions ----------------------------------------------------------------------------------

async function loadVersions(projects) {
  const holder = $("projects");
  clear(holder);
  if (!projects.length) { say("versions-status", "No project yet."); return; }
  say("versions-status", "");
  for (const project of projects) {
    const answer = await api("projects/" + encodeURIComponent(project.project));
    const block = el("div", null, { class: "project" });
    block.appendChild(el("h3", project.project + " — endpoint " + project.endpoint + " (" + project.endpoint_status + ")"));
    if (!answer.ok) { block.appendChild(el("p", problem(answer), { class: "error" })); holder.appendChild(block); continue; }
    const versions = answer.body.versions;
    const wrap = el("div", null, { class: "scroll" });
    const grid = el("table");
    const head = el("tr");
    for (const title of ["Version", "Run", "Status", "Macro-F1", "Test accuracy", "Created", "Export", ""]) head.appendChild(el("th", title, { scope: "col" }));
    grid.appendChild(el("thead")).appendChild(head);
    const body = grid.appendChild(el("tbody"));
    for (const version of versions) {
      const row = el("tr", null, version.serving ? { class: "serving" } : {});
      row.append(el("td", "v" + version.version), el("td", version.run_id), el("td", version.status + (version.serving ? " · serving" : "")),
                 el("td", fixed(version.metrics.macro_f1), { class: "num" }), el("td", fixed(version.metrics["test:accuracy"]), { class: "num" }),
                 el("td", version.created_at || "–"));
      // The exported model, as a plain link (the file locally, a presigned S3 URL on AWS).
      const exports = el("td");
      for (const [format, name] of [["onnx", "ONNX"], ["torchscript", "TorchScript"]]) {
        if (exports.childNodes.length) exports.append(" · ");
        exports.appendChild(el("a", name, { href: url("projects/" + encodeURIComponent(project.project) + "/versions/" + encodeURIComponent(version.run_id) + "/export/" + format), download: "" }));
      }
      row.appendChild(exports);
      const action = el("td");
      if (!version.serving) {
        const deploy = el("button", version.status === "Approved" ? "Deploy" : "Approve and deploy", { type: "button" });
        deploy.addEventListener("click", () => deployVersion(project.project, version.run_id));
        action.appendChild(deploy);
      }
      row.appendChild(action);
      body.appendChild(row);
    }
    wrap.appendChild(grid);
    block.appendChild(wrap);
    if (versions.some((v) => v.serving)) {
      const back = el("button", "Roll back to the previous approved version", { type: "button", class: "secondary" });
      back.addEventListener("click", () => deployVersion(project.project, "previous"));
      block.appendChild(back);
    }
    block.appendChild(el("h4", "Drift checks"));
    block.appendChild(await driftTable(project.project));
    holder.appendChild(block);
  }
}

async function deployVersion(project, runId) {
  const answer = await api("projects/" + encodeURIComponent(project) + "/versions/" + encodeURIComponent(runId) + "/deploy", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  if (!answer.ok) { say("versions-status", problem(answer), "error"); return; }
  say("versions-status", project + ": version " + answer.body.version + " (" + answer.body.run_id + "): " + answer.body.action, "ok");
  setTimeout(refreshAll, 1500);
}

// -- Review ------------------------------------------------------------------------------------

let review = { project: "", items: [], classes: [], at: 0 };
let reviewLoads = 0;  // a newer load wins: an older answer arriving late is dropped

async function loadReview() {
  const project = $("review-project").value;
  const mine = ++reviewLoads;
  review = { project: project, items: [], classes: [], at: 0 };
  $("review-card").hidden = true;  // nothing of the project shown before can be labelled meanwhile
  if (!project) { say("review-status", "No project to review."); return; }
  say("review-status", "Reading " + project + "'s review queue…");
  const answer = await api("projects/" + encodeURIComponent(project) + "/review");
  if (mine !== reviewLoads) return;
  if (!answer.ok) { say("review-status", problem(answer), "error"); showItem(); return; }
  review.items = answer.body.items;
  review.classes = answer.body.classes;
  await showItem();
}

// The image comes from the API's own route (with the key): a blob: URL, as the chosen image's preview.
async function showImage(item) {
  const image = $("review-image");
  if (image.src) URL.revokeObjectURL(image.src);
  image.removeAttribute("src");
  const headers = { Accept: "image/jpeg, image/png" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers["x-api-key"] = key;
  const response = await fetch(url(item.image_url), { headers: headers });
  if (!response.ok) { say("review-status", "the image could not be read (" + response.status + ")", "error"); return; }
  image.src = URL.createObjectURL(await response.blob());
  const best = item.predictions[0];
  image.alt = "captured " + item.captured_at + (best ? "; the model's best guess: " + best.label : "");
}

async function showItem() {
  const card = $("review-card");
  const item = review.items[review.at];
  if (!item) {
    card.hidden = true;
    if (review.project) say("review-status", "Nothing to review in " + review.project + ".");
    return;
  }
  card.hidden = false;
  say("review-status", (review.items.length - review.at) + " to review in " + review.project + " · captured " + item.captured_at + (item.abstained ? " · the model abstained" : ""));
  const list = $("review-predictions");
  clear(list);
  for (const prediction of item.predictions) list.appendChild(el("li", prediction.label + " " + (prediction.probability * 100).toFixed(1) + "%"));
  const choices = $("review-classes");
  clear(choices);
  review.classes.forEach((name, i) => {
    const button = el("button", (i < 9 ? (i + 1) + " " : "") + name, { type: "button", "data-class": name });
    button.addEventListener("click", () => decide({ label: name }));
    choices.appendChild(button);
  });
  await showImage(item);
}

async function decide(decision) {
  const item = review.items[review.at];
  if (!item) return;
  const answer = await api("projects/" + encodeURIComponent(review.project) + "/review/" + encodeURIComponent(item.id), { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(decision) });
  if (!answer.ok) { say("review-status", problem(answer), "error"); return; }
  if (decision.new_class) review.classes = review.classes.concat([decision.label]).sort();
  review.at += 1;
  await showItem();
  const done = decision.discard ? "discarded" : "labelled " + decision.label + " (" + answer.body.split + ")";
  say("review-status", done + " · " + $("review-status").textContent, "ok");
  $("review-card").focus();
}

function addClass() {
  const name = $("new-class").value.trim();
  if (!name) return;
  $("new-class").value = "";
  decide(review.classes.includes(name) ? { label: name } : { label: name, new_class: true });
}

async function retrain() {
  const project = $("review-project").value;
  if (!project) return;
  const answer = await api("projects/" + encodeURIComponent(project) + "/retrain", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  if (!answer.ok) { say("review-status", problem(answer), "error"); return; }
  const images = Object.values(answer.body.reviewed_images).reduce((n, splits) => n + Object.values(splits).reduce((a, b) => a + b, 0), 0);
  say("review-status", "Retraining " + project + " from " + answer.body.warm_start_from + " as run " + answer.body.run_id + " (" + images + " reviewed images)", "ok");
  setTimeout(refreshAll, 1500);
}

// A project's drift checks, newest first: a table under its versions.
async function driftTable(project) {
  const answer = await api("projects/" + encodeURIComponent(project) + "/drift");
  if (!answer.ok) return el("p", problem(answer), { class: "error" });
  if (!answer.body.checks.length) return el("p", "No drift check yet.", { class: "hint" });
  const wrap = el("div", null, { class: "scroll" });
  const grid = wrap.appendChild(el("table", null, { "aria-label": project + "'s drift checks, newest first" }));
  const head = el("tr");
  for (const title of ["Checked", "Verdict", "Images", "p-value", "Most shifted labels"]) head.appendChild(el("th", title, { scope: "col" }));
  grid.appendChild(el("thead")).appendChild(head);
  const body = grid.appendChild(el("tbody"));
  for (const check of answer.body.checks) {
    const row = el("tr", null, check.status === "drift" ? { class: "bad" } : {});
    row.append(el("td", check.checked_at || "–"), el("td", check.status || "–"), el("td", check.sample_size, { class: "num" }),
               el("td", fixed(check.p_value, 4), { class: "num" }), el("td", ((check.labels || {}).most_shifted || []).map((l) => l.label).join(", ")));
    body.appendChild(row);
  }
  return wrap;
}

function wireReview() {
  $("review-project").addEventListener("change", loadReview);
  $("retrain").addEventListener("click", retrain);
  $("discard").addEventListener("click", () => decide({ discard: true }));
  $("add-class").addEventListener("click", addClass);
  $("new-class").addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); addClass(); } });
  $("review-card").addEventListener("keydown", (event) => {
    if (event.target.id === "new-class" || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (/^[1-9]$/.test(key) && review.classes[Number(key) - 1]) { event.preventDefault(); decide({ label: review.classes[Number(key) - 1] }); }
    else if (key === "d") { event.preventDefault(); decide({ discard: true }); }
    else if (key === "s") { event.preventDefault(); review.at += 1; showItem().then(() => $("review-card").focus()); }
    else if (key === "n") { event.preventDefault(); $("new-class").focus(); }
  });
}

// -- start -------------------------------------------------------------------------------------

async function loadErrorWords() {
  const answer = await api("openapi.json");
  if (answer.ok) errorWords = answer.body.components.schemas.Error["x-error-codes"] || {};
}

async function refreshAll() {
  const projects = await loadProjects();
  const select = $("review-project");
  const chosen = select.value;
  clear(select);
  for (const project of projects) select.appendChild(el("option", project.project, { value: project.project }));
  if (projects.some((p) => p.project === chosen)) select.value = chosen;
  await Promise.all([loadRuns(), loadVersions(projects), loadReview()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY) || "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    refreshAll();
  });
  wireTryIt();
  wireReview();
  loadErrorWords().then(refreshAll);
});
