// togi dashboard: one page with hash routes (#/jobs, #/jobs/ID, #/new, #/playground, #/evaluate).
// It signs in with an API key (kept in sessionStorage, sent as the Bearer header) and uses the same API as any
// client, so it shows only what that key's organization owns. Every text from the server is put in the page with
// textContent, never parsed as HTML; the evaluation report is shown in a sandboxed frame without scripts.
"use strict";

const KEY_STORAGE = "togi.apiKey";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const POLL_MS = 1500;
const COLORS = { train: "#2f5bd3", valid: "#d4641c", lr: "#1f7a45", speed: "#7b3fb3" };
const STEP_INCREMENTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
let pageTimers = [];
let pageCharts = [];
let pageGeneration = 0; // bumped on each navigation: a slow reply for an old page is dropped

// ---------- small helpers ----------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const $ = (selector, root = document) => root.querySelector(selector);
const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "—");
const number = (value, digits = 4) => (value === null || value === undefined ? "—" : Number(value).toFixed(digits));
// learning rates (2e-4) need an exponent; losses and tokens/s do not
const formatTick = (v) => (v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : String(Number(v.toPrecision(4))));
const badge = (status) => el("span", { class: `badge ${status}`, text: status.replace("_", " ") });
const errorBox = (message) => el("div", { class: "error", role: "alert", text: message });
function every(ms, task) {
  const generation = pageGeneration;
  const id = setInterval(() => { if (generation === pageGeneration) task(); }, ms);
  pageTimers.push(id);
  return id;
}
function hashQuery() {
  const query = location.hash.split("?")[1] || "";
  return new URLSearchParams(query);
}

// ---------- the API ----------
const apiKey = () => sessionStorage.getItem(KEY_STORAGE);
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
async function api(path, { method = "GET", body, form, raw = false, key = apiKey() } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  let payload;
  if (form) payload = form;
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch (error) {
    throw new ApiError(0, `cannot reach the togi server (${error.message}); is it still running?`);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message || message; } catch (ignored) { /* not the JSON envelope */ }
    if (response.status === 401 && key === apiKey()) { signOut(message); }
    throw new ApiError(response.status, message);
  }
  return raw ? response : response.json();
}
async function listAll(path) {
  const items = [];
  let after = null;
  for (let pages = 0; pages < 50; pages++) {
    const separator = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${separator}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.data);
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  return items;
}
async function upload(file, purpose = "fine-tune") {
  const form = new FormData();
  form.append("purpose", purpose);
  form.append("file", file, file.name);
  return api("/v1/files", { method: "POST", form });
}
async function download(fileId, filename) {
  const response = await api(`/v1/files/${encodeURIComponent(fileId)}/content`, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (ignored) { // no clipboard permission: select the text, so Ctrl+C copies it
    const range = document.createRange();
    range.selectNodeContents(button.previousElementSibling);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }
  button.textContent = "copied";
  setTimeout(() => { button.textContent = "copy"; }, 1500);
}
const copyLine = (text) => el("span", { class: "copy-line" }, el("code", { text, class: "model-id" }),
  el("button", { class: "secondary copy", type: "button", onclick: (event) => copyText(text, event.target) }, "copy"));

// ---------- sign-in and routing ----------
function signOut(reason) {
  sessionStorage.removeItem(KEY_STORAGE);
  location.hash = "#/signin";
  route(reason);
}
function showSignIn(reason) {
  $("#nav").hidden = true;
  $("#who").hidden = true;
  const keyInput = el("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "sk-togi-…", required: true });
  const status = el("div");
  const form = el("form", { class: "card narrow", id: "signin" },
    el("h1", { text: "Sign in to togi" }),
    el("p", { class: "hint", text: "Use an API key of this server. `togi serve` printed one when it first started; " +
      "create more with `togi serve keys create --org NAME`. The key stays in this tab only." }),
    el("label", { for: "api-key", text: "API key" }), keyInput, status,
    el("div", { class: "row", style: "margin-top:0.9rem" }, el("button", { type: "submit", text: "Sign in" })));
  if (reason) status.append(errorBox(reason));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    const key = keyInput.value.trim();
    try {
      await api("/dashboard/api/whoami", { key });
      sessionStorage.setItem(KEY_STORAGE, key);
      location.hash = "#/jobs";
    } catch (error) {
      status.append(errorBox(error.message));
    }
  });
  $("#main").replaceChildren(form);
  keyInput.focus();
}
async function route(reason) {
  pageGeneration += 1;
  pageTimers.forEach(clearInterval);
  pageTimers = [];
  pageCharts.forEach((chart) => chart.destroy());
  pageCharts = [];
  if (!apiKey()) return showSignIn(typeof reason === "string" ? reason : null);
  const [path] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, id] = path.split("/").map(decodeURIComponent);
  $("#nav").hidden = false;
  $("#who").hidden = false;
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === (page || "jobs"));
  api("/dashboard/api/whoami").then((who) => { $("#who-org").textContent = `organization: ${who.organization}`; }).catch(() => {});
  // Each navigation renders into its own view: a slow reply or a late error of the page before lands in that
  // page's detached view, never on top of this one.
  const main = el("div", { class: "view" }, el("p", { class: "hint", text: "loading…" }));
  $("#main").replaceChildren(main);
  const pages = { jobs: id ? () => jobPage(main, id) : () => jobsPage(main), new: () => newJobPage(main),
    playground: () => playgroundPage(main), evaluate: () => evaluatePage(main) };
  try {
    await (pages[page] || pages.jobs)();
  } catch (error) {
    main.replaceChildren(errorBox(error.message));
  }
}

// ---------- jobs ----------
async function jobsPage(main) {
  const body = el("tbody");
  const table = el("table", { id: "jobs-table" },
    el("thead", {}, el("tr", {}, ...["job", "status", "base model", "suffix", "fine-tuned model", "created", "finished"].map((h) => el("th", { text: h })),
      el("th", { class: "num", text: "trained tokens" }))), body);
  main.replaceChildren(el("h1", {}, "Fine-tuning jobs", el("a", { class: "button", href: "#/new", text: "New job" })), table);
  const generation = pageGeneration;
  async function refresh() {
    const jobs = await listAll("/v1/fine_tuning/jobs");
    if (generation !== pageGeneration) return;
    body.replaceChildren(...jobs.map((job) => el("tr", { class: "clickable", dataset: { job: job.id }, onclick: () => { location.hash = `#/jobs/${job.id}`; } },
      el("td", {}, el("a", { href: `#/jobs/${job.id}`, text: job.id })), el("td", {}, badge(job.status)), el("td", { text: job.model }),
      el("td", { text: job.suffix || "—" }), el("td", { class: "mono", text: job.fine_tuned_model || "—" }), el("td", { text: when(job.created_at) }),
      el("td", { text: when(job.finished_at) }), el("td", { class: "num", text: job.trained_tokens ?? "—" }))));
    if (!jobs.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "hint", text: "No jobs yet. Create one with “New job”, or with the openai client." })));
    return jobs;
  }
  const jobs = await refresh();
  if (jobs && jobs.some((job) => !TERMINAL.includes(job.status))) every(3000, refresh);
}

function fileChooser(id, labelText, hintText, onUploaded) {
  const input = el("input", { type: "file", id, accept: ".jsonl,.json,.csv,.parquet,.txt" });
  const status = el("div", { class: "hint", id: `${id}-status`, text: hintText });
  input.addEventListener("change", async () => {
    if (!input.files.length) return;
    const file = input.files[0];
    status.replaceChildren(`uploading ${file.name}…`);
    try {
      const record = await upload(file);
      status.replaceChildren("uploaded as ", el("code", { text: record.id }), ` (${record.bytes} bytes)`);
      input.dataset.fileId = record.id;
      await onUploaded(record, status);
    } catch (error) {
      delete input.dataset.fileId;
      status.replaceChildren(errorBox(`${file.name}: ${error.message}`));
    }
  });
  return [el("label", { for: id, text: labelText }), input, status];
}

async function newJobPage(main) {
  const models = (await api("/v1/models")).data.filter((model) => model.owned_by === "togi");
  const resolved = el("p", { class: "hint", id: "auto-resolved", text: "“auto” values are resolved from the training file once it is uploaded." });
  const numberField = (id, text, step) => el("div", {}, el("label", { for: id, text }),
    el("input", { type: "number", id, min: step === "any" ? "0.01" : "1", step, placeholder: "auto" }));
  const fields = el("div", { class: "fields" }, numberField("n_epochs", "Epochs", "1"), numberField("batch_size", "Batch size", "1"),
    numberField("learning_rate_multiplier", "Learning-rate multiplier", "any"));
  const method = el("select", { id: "method" }, el("option", { value: "supervised", text: "supervised (SFT, chat examples)" }),
    el("option", { value: "dpo", text: "dpo (preference pairs)" }));
  const showAuto = async (record) => {
    try {
      const query = new URLSearchParams({ training_file: record.id, model: $("#base-model").value, method: method.value });
      const auto = await api(`/dashboard/api/auto_hyperparameters?${query}`);
      const h = auto.hyperparameters;
      resolved.textContent = `auto resolves to: ${h.n_epochs} epochs · batch size ${h.batch_size} · learning-rate multiplier ${h.learning_rate_multiplier}` +
        `${h.beta !== undefined ? ` · beta ${h.beta}` : ""} (for ${auto.n_examples} example${auto.n_examples === 1 ? "" : "s"})`;
      if (auto.problem) resolved.append(errorBox(`The job would fail: ${auto.problem}`));
      for (const name of ["n_epochs", "batch_size", "learning_rate_multiplier"]) $(`#${name}`).placeholder = `auto (${h[name]})`;
    } catch (error) {
      resolved.replaceChildren(errorBox(error.message));
    }
  };
  const [trainLabel, trainInput, trainStatus] = fileChooser("training-file", "Training file",
    "JSONL in OpenAI's chat format ({messages}) or, for dpo, preference pairs. It is uploaded when chosen.", showAuto);
  const [validLabel, validInput, validStatus] = fileChooser("validation-file", "Validation file (optional)", "Same format; its loss is drawn beside the training loss.", async () => {});
  const recheck = () => { if (trainInput.dataset.fileId) showAuto({ id: trainInput.dataset.fileId }); };
  method.addEventListener("change", recheck);
  const status = el("div");
  const form = el("form", { class: "card", id: "new-job" },
    el("h1", { text: "New fine-tuning job" }), trainLabel, trainInput, trainStatus, validLabel, validInput, validStatus,
    el("div", { class: "fields" },
      el("div", {}, el("label", { for: "base-model", text: "Base model" }),
        el("select", { id: "base-model", onchange: recheck }, ...models.map((model) => el("option", { value: model.id, text: model.id })))),
      el("div", {}, el("label", { for: "method", text: "Method" }), method),
      el("div", {}, el("label", { for: "suffix", text: "Suffix (in the model's name)" }), el("input", { type: "text", id: "suffix", maxlength: 64 })),
      el("div", {}, el("label", { for: "seed", text: "Seed" }), el("input", { type: "number", id: "seed", placeholder: "random" }))),
    el("h2", { text: "Hyper-parameters" }), fields, resolved, status,
    el("div", { class: "row", style: "margin-top:1rem" }, el("button", { type: "submit", id: "create-job", text: "Create job" })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    if (!trainInput.dataset.fileId) return status.append(errorBox("Choose a training file first (it must upload without an error)."));
    const hyper = {};
    for (const name of ["n_epochs", "batch_size", "learning_rate_multiplier"]) {
      const value = $(`#${name}`).value;
      if (value !== "") hyper[name] = Number(value);
    }
    const body = { model: $("#base-model").value, training_file: trainInput.dataset.fileId,
      method: { type: method.value, [method.value]: { hyperparameters: hyper } } };
    if (validInput.dataset.fileId) body.validation_file = validInput.dataset.fileId;
    if ($("#suffix").value.trim()) body.suffix = $("#suffix").value.trim();
    if ($("#seed").value !== "") body.seed = Number($("#seed").value);
    try {
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", body });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      status.append(errorBox(error.message));
    }
  });
  main.replaceChildren(form);
}

// ---------- one job ----------
function lineChart(container, title, seriesSpecs) {
  const box = el("div", { class: "chart", id: container, dataset: { points: "0" } }, el("h3", { text: title }),
    el("div", { class: "empty", text: "waiting for the first step…" }));
  let chart = null;
  return {
    node: box,
    update(xs, columns) {
      const points = columns.reduce((sum, column) => sum + column.filter((v) => v !== null && v !== undefined).length, 0);
      box.dataset.points = String(points);
      if (!xs.length) return;
      const data = [xs, ...columns];
      if (!chart) {
        box.querySelector(".empty")?.remove();
        chart = new uPlot({
          width: Math.max(300, box.clientWidth - 20), height: 210, legend: { live: false },
          scales: { x: { time: false } }, cursor: { drag: { x: false, y: false } },
          axes: [{ label: "step", size: 40, incrs: STEP_INCREMENTS }, { size: 64, values: (u, ticks) => ticks.map(formatTick) }],
          series: [{ label: "step" }, ...seriesSpecs.map((spec) => ({ label: spec.label, stroke: spec.color, width: 2, spanGaps: true,
            points: { show: xs.length < 60, size: 5, fill: spec.color } }))],
        }, data, box);
        pageCharts.push(chart);
      } else {
        chart.setData(data);
      }
    },
  };
}

function metricSeries(events) {
  const byStep = new Map();
  for (const event of events) {
    if (event.type !== "metrics" || !event.data || event.data.step === undefined) continue;
    const row = byStep.get(event.data.step) || {};
    for (const [name, value] of Object.entries(event.data)) if (value !== null && value !== undefined) row[name] = value;
    byStep.set(event.data.step, row);
  }
  const steps = [...byStep.keys()].sort((a, b) => a - b);
  const column = (name) => steps.map((step) => byStep.get(step)[name] ?? null);
  return { steps, train: column("train_loss"), valid: column("valid_loss"), lr: column("learning_rate"), speed: column("tokens_per_second"),
    total: steps.length ? byStep.get(steps[steps.length - 1]).total_steps : null };
}

function evaluationCard(jobId, record) {
  const card = el("div", { class: "card evaluation", dataset: { evaluation: record.id, status: record.status } });
  card.append(el("h3", {}, `Evaluation on ${record.data || record.file_id || "a test file"} `, badge(record.status)));
  if (record.status === "running") card.append(el("p", { class: "hint", text: "togi eval is answering the test prompts with the tuned and the base model…" }));
  if (record.error) card.append(errorBox(record.error.message));
  if (record.metrics && record.metrics.length) {
    card.append(el("p", { class: "hint", text: `${record.n_examples} examples, greedy answers, baseline: ${record.baseline}` }),
      el("table", { class: "metric-table" }, el("thead", {}, el("tr", {}, el("th", { text: "metric" }), el("th", { class: "num", text: "tuned" }),
        el("th", { class: "num", text: record.baseline }), el("th", { class: "num", text: "delta" }))),
      el("tbody", {}, ...record.metrics.map((row) => {
        const better = row.delta !== null && row.delta !== 0 && (row.delta > 0) === row.higher_is_better;
        const worse = row.delta !== null && row.delta !== 0 && !better;
        return el("tr", { dataset: { metric: row.name } }, el("td", { text: row.name }), el("td", { class: "num", text: number(row.tuned) }),
          el("td", { class: "num", text: number(row.baseline) }),
          el("td", { class: `num ${better ? "delta-good" : worse ? "delta-bad" : ""}`, text: row.delta === null ? "—" : (row.delta > 0 ? "+" : "") + number(row.delta) }));
      }))));
    const frameHolder = el("div");
    card.append(el("div", { class: "row", style: "margin-top:0.6rem" }, el("button", { class: "secondary open-report", type: "button", onclick: async () => {
      try {
        const html = await (await api(`/dashboard/api/jobs/${jobId}/evaluations/${record.id}/report`, { raw: true })).text();
        frameHolder.replaceChildren(el("iframe", { class: "report-frame", sandbox: "", srcdoc: html, title: "togi eval report" }));
      } catch (error) { frameHolder.replaceChildren(errorBox(error.message)); }
    } }, "Open the report")), frameHolder);
  }
  return card;
}

function evaluationForm(jobId, onStarted) {
  const status = el("div");
  const [label, input, fileStatus] = fileChooser(`eval-file-${jobId}`, "Test file", "Chat examples; the last assistant message of each is the reference.", async () => {});
  const form = el("form", { class: "card eval-form" }, el("h3", { text: "Evaluate this model against its base" }), label, input, fileStatus,
    el("div", { class: "fields" },
      el("div", {}, el("label", { for: "label-pattern", text: "Label pattern (optional)" }),
        el("input", { type: "text", id: "label-pattern", placeholder: "ラベル: (\\S+)" })),
      el("div", {}, el("label", { for: "eval-limit", text: "Only the first N examples" }), el("input", { type: "number", id: "eval-limit", min: 1, placeholder: "all" }))),
    status, el("div", { class: "row", style: "margin-top:0.8rem" }, el("button", { type: "submit", text: "Start evaluation" })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    if (!input.dataset.fileId) return status.append(errorBox("Choose a test file first."));
    const body = { file_id: input.dataset.fileId };
    if ($("#label-pattern", form).value) body.label_pattern = $("#label-pattern", form).value;
    if ($("#eval-limit", form).value) body.limit = Number($("#eval-limit", form).value);
    try {
      await api(`/dashboard/api/jobs/${jobId}/evaluations`, { method: "POST", body });
      onStarted();
    } catch (error) { status.append(errorBox(error.message)); }
  });
  return form;
}

async function jobPage(main, jobId) {
  const generation = pageGeneration;
  let job = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`);
  const events = [];
  const seen = new Set();
  const header = el("h1");
  const actions = el("div", { class: "row" });
  const facts = el("dl", { class: "facts" });
  const problem = el("div");
  const progress = el("div", { class: "card", id: "progress" });
  const loss = lineChart("loss-chart", "loss (training and validation)", [{ label: "training loss", color: COLORS.train }, { label: "validation loss", color: COLORS.valid }]);
  const rate = lineChart("lr-chart", "learning rate", [{ label: "learning rate", color: COLORS.lr }]);
  const speed = lineChart("speed-chart", "training speed (tokens/s)", [{ label: "tokens/s", color: COLORS.speed }]);
  const checkpoints = el("tbody");
  const evaluations = el("div", { id: "evaluations" });
  const eventRows = el("tbody");
  const evaluateSlot = el("div");
  main.replaceChildren(header, actions, problem, el("div", { class: "card" }, facts), progress,
    el("div", { class: "charts" }, loss.node, rate.node, speed.node),
    el("h2", { text: "Checkpoints" }), el("table", { id: "checkpoints" }, el("thead", {}, el("tr", {}, el("th", { class: "num", text: "step" }),
      el("th", { text: "model" }), el("th", { class: "num", text: "training loss" }), el("th", { class: "num", text: "token accuracy" }), el("th", { text: "" }))), checkpoints),
    el("h2", { text: "Evaluations" }), evaluations, evaluateSlot,
    el("h2", { text: "Events" }), el("div", { class: "events card" }, el("table", { id: "events" }, el("thead", {}, el("tr", {}, el("th", { text: "time" }),
      el("th", { text: "level" }), el("th", { text: "message" }))), eventRows)));

  function renderJob() {
    for (const placeholder of main.querySelectorAll(".chart .empty")) {
      placeholder.textContent = TERMINAL.includes(job.status) ? "no training step was logged" : "waiting for the first step…";
    }
    header.replaceChildren(el("span", { class: "mono", text: job.id }), badge(job.status));
    const act = (label, path, kind) => el("button", { class: kind, type: "button", id: `${path}-job`, onclick: async (event) => {
      event.target.disabled = true;
      try {
        job = await api(`/v1/fine_tuning/jobs/${job.id}/${path}`, { method: "POST" });
        renderJob();
        await refreshEvents(); // the event the action wrote, even when the job has ended and polling stopped
      } catch (error) { problem.replaceChildren(errorBox(error.message)); }
    } }, label);
    actions.replaceChildren(...[
      ["running", "queued"].includes(job.status) && act("Pause", "pause", "secondary"),
      job.status === "paused" && act("Resume", "resume", "secondary"),
      !TERMINAL.includes(job.status) && act("Cancel", "cancel", "danger"),
      job.fine_tuned_model && el("a", { class: "button", href: `#/playground?b=${encodeURIComponent(job.fine_tuned_model)}`, text: "Chat with it" }),
    ].filter(Boolean));
    problem.replaceChildren();
    if (job.status === "failed" && job.error) problem.append(errorBox(`The job failed: ${job.error.message}` + (job.error.param ? ` (${job.error.param})` : "")));
    const hyper = job.hyperparameters || {};
    const fact = (name, value) => [el("dt", { text: name }), el("dd", {}, value)];
    facts.replaceChildren(
      ...fact("base model", job.model),
      ...fact("fine-tuned model", job.fine_tuned_model ? copyLine(job.fine_tuned_model) : "— (when the job succeeds)"),
      ...fact("method", job.method?.type || "supervised"), ...fact("suffix", job.suffix || "—"),
      ...fact("hyper-parameters", Object.entries(hyper).map(([k, v]) => `${k} ${v}`).join(" · ")),
      ...fact("training file", el("code", { text: job.training_file })), ...fact("validation file", job.validation_file ? el("code", { text: job.validation_file }) : "—"),
      ...fact("seed", String(job.seed ?? "—")), ...fact("created", when(job.created_at)), ...fact("finished", when(job.finished_at)),
      ...fact("trained tokens", job.trained_tokens ?? "—"),
      ...fact("result file", job.result_files && job.result_files.length
        ? el("button", { class: "link", type: "button", id: "result-file", onclick: () => download(job.result_files[0], `step_metrics_${job.id}.csv`) }, "download step metrics (CSV)")
        : "— (when the job succeeds)"));
    if (job.status === "succeeded" && !evaluateSlot.childElementCount) evaluateSlot.append(evaluationForm(job.id, refreshEvaluations));
  }

  let eventsQueue = Promise.resolve();
  function refreshEvents() { // one fetch at a time: the poller and a button may both ask for the new events
    eventsQueue = eventsQueue.catch(() => {}).then(fetchNewEvents);
    return eventsQueue;
  }
  async function fetchNewEvents() {
    const fresh = [];
    let after = null;
    for (let pages = 0; pages < 100; pages++) {
      const page = await api(`/v1/fine_tuning/jobs/${job.id}/events?limit=100${after ? `&after=${after}` : ""}`);
      let reachedSeen = false;
      for (const event of page.data) {
        if (seen.has(event.id)) { reachedSeen = true; break; }
        fresh.push(event);
      }
      if (reachedSeen || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    fresh.reverse(); // oldest first
    for (const event of fresh) { seen.add(event.id); events.push(event); }
    if (!fresh.length) return;
    eventRows.prepend(...fresh.reverse().map((event) => el("tr", { class: `level-${event.level}` }, el("td", { text: when(event.created_at) }),
      el("td", { text: event.level }), el("td", { text: event.message }))));
    const series = metricSeries(events);
    loss.update(series.steps, [series.train, series.valid]);
    rate.update(series.steps, [series.lr]);
    speed.update(series.steps, [series.speed]);
    const done = series.steps.length ? series.steps[series.steps.length - 1] : 0;
    const total = series.total || 0;
    progress.replaceChildren(el("div", { class: "hint", id: "step-progress", text: total ? `step ${done} of ${total}` : `status: ${job.status}` }),
      el("div", { class: "progress" }, el("div", { style: `width:${total ? Math.round((100 * done) / total) : 0}%` })));
  }

  async function refreshCheckpoints() {
    const page = await api(`/v1/fine_tuning/jobs/${job.id}/checkpoints?limit=100`);
    checkpoints.replaceChildren(...page.data.map((c) => el("tr", {}, el("td", { class: "num", text: c.step_number }), el("td", {}, copyLine(c.fine_tuned_model_checkpoint)),
      el("td", { class: "num", text: number(c.metrics?.train_loss) }), el("td", { class: "num", text: number(c.metrics?.train_mean_token_accuracy, 3) }),
      el("td", {}, el("a", { href: `#/playground?b=${encodeURIComponent(c.fine_tuned_model_checkpoint)}`, text: "chat" })))));
    if (!page.data.length) checkpoints.append(el("tr", {}, el("td", { colspan: 5, class: "hint", text: "none yet: one is saved after each epoch" })));
  }

  let evaluationsRunning = false;
  async function refreshEvaluations() {
    const list = (await api(`/dashboard/api/jobs/${job.id}/evaluations`)).data;
    evaluations.replaceChildren(...list.map((record) => evaluationCard(job.id, record)));
    if (!list.length) evaluations.append(el("p", { class: "hint", text: job.status === "succeeded"
      ? "Not evaluated yet: upload a test file below, or run `togi eval` on the job's run." : "The model can be evaluated once the job succeeds." }));
    evaluationsRunning = list.some((record) => record.status === "running");
  }

  async function refresh() {
    if (generation !== pageGeneration) return;
    const wasTerminal = TERMINAL.includes(job.status);
    job = await api(`/v1/fine_tuning/jobs/${job.id}`);
    renderJob();
    await refreshEvents();
    await refreshCheckpoints();
    if (evaluationsRunning || (TERMINAL.includes(job.status) && !wasTerminal)) await refreshEvaluations();
  }
  renderJob();
  await Promise.all([refreshEvents(), refreshCheckpoints(), refreshEvaluations()]);
  let busy = false;
  every(POLL_MS, async () => {
    if (busy || (TERMINAL.includes(job.status) && !evaluationsRunning)) return;
    busy = true;
    try { await refresh(); } catch (error) { problem.replaceChildren(errorBox(error.message)); } finally { busy = false; }
  });
}

// ---------- playground ----------
async function allModels() {
  const models = (await api("/v1/models")).data;
  const jobs = await listAll("/v1/fine_tuning/jobs");
  const checkpoints = [];
  for (const job of jobs.filter((j) => j.status !== "validating_files")) {
    const page = await api(`/v1/fine_tuning/jobs/${job.id}/checkpoints?limit=100`);
    checkpoints.push(...page.data.map((c) => c.fine_tuned_model_checkpoint));
  }
  return { base: models.filter((m) => m.owned_by === "togi").map((m) => m.id), tuned: models.filter((m) => m.owned_by !== "togi").map((m) => m.id),
    checkpoints, jobs };
}

function modelSelect(id, groups, chosen) {
  const select = el("select", { id });
  for (const [label, ids] of [["base models", groups.base], ["fine-tuned models", groups.tuned], ["checkpoints", groups.checkpoints]]) {
    if (ids.length) select.append(el("optgroup", { label }, ...ids.map((model) => el("option", { value: model, text: model }))));
  }
  if (chosen) {
    if (![...select.options].some((option) => option.value === chosen)) select.append(el("option", { value: chosen, text: chosen }));
    select.value = chosen;
  }
  return select;
}

async function streamChat(model, messages, options, onDelta) {
  const response = await api("/v1/chat/completions", { method: "POST", raw: true,
    body: { model, messages, stream: true, max_tokens: options.maxTokens, temperature: options.temperature } });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") return finish;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices && chunk.choices[0];
        if (choice && choice.delta && choice.delta.content) onDelta(choice.delta.content);
        if (choice && choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return finish;
}

async function playgroundPage(main) {
  const groups = await allModels();
  const query = hashQuery();
  const newest = groups.tuned[groups.tuned.length - 1] || groups.base[0];
  const chosenB = query.get("b") || newest;
  const baseOfB = chosenB.startsWith("ft:") ? chosenB.split(":")[1] : null; // ft:BASE:org:suffix:id: A defaults to B's own base
  const defaults = { a: query.get("a") || (groups.base.includes(baseOfB) ? baseOfB : groups.base[0]), b: chosenB };
  const panes = ["a", "b"].map((side) => {
    const chosen = defaults[side];
    const select = modelSelect(`model-${side}`, groups, chosen);
    const answer = el("div", { class: "answer", id: `answer-${side}`, dataset: { chunks: "0" } });
    const stats = el("div", { class: "stats", id: `stats-${side}` });
    return { side, select, answer, stats, node: el("div", { class: "card" }, el("label", { for: `model-${side}`, text: side === "a" ? "Model A" : "Model B" }),
      select, el("div", { style: "height:0.6rem" }), answer, stats) };
  });
  const system = el("textarea", { id: "system", placeholder: "optional system message", style: "min-height:2.5rem" });
  const prompt = el("textarea", { id: "prompt", placeholder: "Ask something, e.g. 音はとても良いのですが、二日でバッテリーが切れました。" });
  const maxTokens = el("input", { type: "number", id: "max-tokens", value: 128, min: 1, max: 4096 });
  const temperature = el("input", { type: "number", id: "temperature", value: 0, min: 0, max: 2, step: "0.1" });
  const send = el("button", { type: "button", id: "send-a" }, "Send to A");
  const compare = el("button", { type: "button", id: "compare", class: "secondary" }, "Compare A and B");
  async function ask(pane) {
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: prompt.value });
    pane.answer.textContent = "";
    pane.answer.dataset.chunks = "0";
    pane.answer.dataset.done = "";
    pane.answer.classList.add("streaming");
    pane.stats.textContent = "waiting for the first token…";
    const started = performance.now();
    let firstToken = null;
    try {
      const finish = await streamChat(pane.select.value, messages, { maxTokens: Number(maxTokens.value), temperature: Number(temperature.value) }, (text) => {
        firstToken = firstToken ?? performance.now();
        pane.answer.append(text);
        pane.answer.dataset.chunks = String(Number(pane.answer.dataset.chunks) + 1);
        pane.stats.textContent = "streaming…";
      });
      const seconds = (performance.now() - started) / 1000;
      pane.stats.textContent = `${pane.answer.dataset.chunks} chunks · first token after ${firstToken ? ((firstToken - started) / 1000).toFixed(2) : "—"} s · ` +
        `${seconds.toFixed(2)} s in all · finish: ${finish || "—"}`;
    } catch (error) {
      pane.answer.append(errorBox(error.message));
      pane.stats.textContent = "";
    } finally {
      pane.answer.classList.remove("streaming");
      pane.answer.dataset.done = "true";
    }
  }
  const guard = (task) => async () => {
    if (!prompt.value.trim()) { prompt.focus(); return; }
    send.disabled = compare.disabled = true;
    try { await task(); } finally { send.disabled = compare.disabled = false; }
  };
  send.addEventListener("click", guard(() => ask(panes[0])));
  compare.addEventListener("click", guard(() => Promise.all(panes.map(ask))));
  prompt.addEventListener("keydown", (event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) send.click(); });
  main.replaceChildren(el("h1", { text: "Playground" }),
    el("p", { class: "hint", text: "Chat with a base model, a fine-tuned model or a checkpoint; “Compare” sends the same prompt to both, as the seeds compare base and tuned. Ctrl+Enter sends to A." }),
    el("div", { class: "card" }, el("label", { for: "system", text: "System" }), system, el("label", { for: "prompt", text: "Prompt" }), prompt,
      el("div", { class: "fields" }, el("div", {}, el("label", { for: "max-tokens", text: "Max tokens" }), maxTokens),
        el("div", {}, el("label", { for: "temperature", text: "Temperature (0: greedy)" }), temperature)),
      el("div", { class: "row", style: "margin-top:0.8rem" }, send, compare)),
    el("div", { class: "panes" }, ...panes.map((pane) => pane.node)));
}

// ---------- evaluate ----------
async function evaluatePage(main) {
  const jobs = (await listAll("/v1/fine_tuning/jobs")).filter((job) => job.status === "succeeded" && job.fine_tuned_model);
  const query = hashQuery();
  main.replaceChildren(el("h1", { text: "Evaluate a fine-tuned model" }));
  if (!jobs.length) {
    main.append(el("p", { class: "notice", text: "No fine-tuned model yet: a job must succeed first." }));
    return;
  }
  const select = el("select", { id: "eval-job" }, ...jobs.map((job) => el("option", { value: job.id, text: `${job.fine_tuned_model}  (${job.id})` })));
  if (query.get("job")) select.value = query.get("job");
  const slot = el("div");
  const results = el("div", { id: "evaluations" });
  const generation = pageGeneration;
  async function show() {
    const jobId = select.value;
    const list = (await api(`/dashboard/api/jobs/${jobId}/evaluations`)).data;
    if (generation !== pageGeneration || jobId !== select.value) return;
    results.replaceChildren(...list.map((record) => evaluationCard(jobId, record)));
    return list.some((record) => record.status === "running");
  }
  function choose() {
    slot.replaceChildren(evaluationForm(select.value, show));
    show();
  }
  select.addEventListener("change", choose);
  main.append(el("div", { class: "card" }, el("label", { for: "eval-job", text: "Fine-tuned model" }), select), slot, el("h2", { text: "Results" }), results);
  choose();
  let busy = false;
  every(2000, async () => {
    if (busy) return;
    busy = true;
    try { if (results.querySelector('[data-status="running"]')) await show(); } finally { busy = false; }
  });
}

document.getElementById("sign-out").addEventListener("click", () => signOut(null));
window.addEventListener("hashchange", () => route());
route();
