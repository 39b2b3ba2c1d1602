// The batches page: the signed-in tenant's batches, kept up to date from each batch's progress stream.
// The API key lives in sessionStorage and travels only in the Authorization header; it is never put in a URL.
"use strict";

const KEY = "pagebatch.apiKey";
const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
const MAX_STREAMS = 4; // browsers allow ~6 connections per server; leave room for the page's other requests
const LIST_EVERY_MS = 5000;
const streams = new Map(); // batch id -> AbortController of its open progress stream
const series = new Map(); // batch id -> [tokens per second, ...] as the stream reported them
const latest = new Map(); // batch id -> everything known of it: the Batch object, then each snapshot over it
let listTimer = null;

const $ = (selector, root = document) => root.querySelector(selector);
const number = (n) => (n ?? 0).toLocaleString("en-US");

function duration(seconds) {
  if (seconds == null) return "";
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))}s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m}m ${Math.round(seconds % 60)}s` : `${Math.floor(m / 60)}h ${m % 60}m`;
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY);
  const response = await fetch(`/v1${path}`, {
    ...options, cache: "no-store", headers: { Authorization: `Bearer ${key}`, ...(options.headers || {}) },
  });
  if (response.status === 401) {
    signOut("That API key was refused.");
    throw new Error("unauthorized");
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response;
}

function card(batch) {
  let node = document.getElementById(`b-${batch.id}`);
  if (!node) {
    node = $("#batch-card").content.firstElementChild.cloneNode(true);
    node.id = `b-${batch.id}`;
    node.dataset.batchId = batch.id;
    $(".id", node).textContent = batch.id;
    $(".created", node).textContent = new Date(batch.created_at * 1000).toLocaleString();
    $("#list").append(node);
  }
  return node;
}

// One batch's numbers, from the Batch object or from a progress snapshot (the same field names where they meet).
function show(node, update) {
  const b = Object.assign(latest.get(update.id || update.batch_id) || {}, update);
  latest.set(node.dataset.batchId, b);
  node.dataset.status = b.status;
  $(".status", node).textContent = b.status.replace("_", " ");
  if (b.model || b.endpoint) $(".what", node).textContent = [b.model, b.endpoint].filter(Boolean).join(" · ");
  const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
  const done = c.total ? (100 * c.completed) / c.total : 0;
  const failed = c.total ? (100 * c.failed) / c.total : 0;
  const bar = $(".bar", node);
  bar.setAttribute("aria-valuenow", String(Math.round(done + failed)));
  $(".done", bar).style.width = `${done}%`;
  $(".failed", bar).style.width = `${failed}%`;
  $(".counts", node).textContent = c.total
    ? `${number(c.completed + c.failed)} of ${number(c.total)} lines` + (c.failed ? ` (${number(c.failed)} failed)` : "")
    : "validating the input file";
  $(".eta", node).textContent = TERMINAL.has(b.status) ? "" : b.eta_seconds != null ? `ETA ${duration(b.eta_seconds)}` : "";
  showThroughput(node, b);
  showUsage(node, b);
  showErrors(node, b);
  showDownloads(node, b);
}

function showThroughput(node, b) {
  const points = series.get(node.dataset.batchId) || [];
  const line = $(".spark polyline", node);
  const top = Math.max(1, ...points);
  const step = points.length > 1 ? 160 / (points.length - 1) : 0;
  line.setAttribute("points", points.map((v, i) => `${(i * step).toFixed(1)},${(27 - (25 * v) / top).toFixed(1)}`).join(" "));
  let rate = TERMINAL.has(b.status) ? null : b.tokens_per_second;
  if (TERMINAL.has(b.status) && b.usage && b.in_progress_at && (b.completed_at || b.cancelled_at || b.expired_at)) {
    const span = (b.completed_at || b.cancelled_at || b.expired_at) - b.in_progress_at;
    rate = span > 0 ? b.usage.output_tokens / span : null; // the whole run's average
  }
  $(".rate", node).textContent = rate != null ? `${number(Math.round(rate))} tokens/s` : "";
  $(".spark", node).style.display = points.length > 1 ? "" : "none";
}

function showUsage(node, b) {
  const u = b.usage;
  if (!u) return;
  const input = u.input_tokens ?? 0;
  const cached = u.cached_tokens ?? u.input_tokens_details?.cached_tokens ?? 0;
  $(".usage", node).textContent = `tokens: ${number(input)} in (${number(cached)} cached) · ${number(u.output_tokens)} out`;
}

function showErrors(node, b) {
  // the first failed lines (from the stream), else the batch's own errors (a file that could not run)
  const batchErrors = Array.isArray(b.errors) ? b.errors : b.errors?.data || [];
  const messages = b.first_errors?.length ? b.first_errors : batchErrors.map((e) => `${e.code}: ${e.message}`);
  $(".errors", node).replaceChildren(
    ...messages.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
}

function showDownloads(node, b) {
  const box = $(".downloads", node);
  const files = [["output", b.output_file_id], ["errors", b.error_file_id], ["usage", b.usage_file_id]];
  if (!files.some(([, id]) => id) || box.childElementCount) return;
  for (const [kind, id] of files.filter(([, id]) => id)) {
    const button = Object.assign(document.createElement("button"), { type: "button", textContent: `${kind}.jsonl` });
    button.className = "download";
    button.dataset.kind = kind;
    button.addEventListener("click", () => download(id, `${node.dataset.batchId}_${kind}.jsonl`));
    box.append(button);
  }
}

async function download(fileId, name) {
  const blob = await (await api(`/files/${fileId}/content`)).blob();
  const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: name });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// Server-Sent Events over fetch (EventSource cannot send an Authorization header).
async function follow(id) {
  const controller = new AbortController();
  streams.set(id, controller);
  try {
    const response = await api(`/batches/${id}/progress`, { signal: controller.signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const name = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (name !== "progress" || !data) continue;
        const snapshot = JSON.parse(data);
        if (snapshot.status === "in_progress" && snapshot.tokens_per_second != null) {
          series.set(id, [...(series.get(id) || []), snapshot.tokens_per_second].slice(-60));
        }
        show(card({ id }), snapshot);
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") console.warn("progress stream", id, error);
  } finally {
    streams.delete(id);
  }
}

async function listBatches() {
  clearTimeout(listTimer);
  try {
    const { data } = await (await api("/batches?limit=50")).json();
    $("#empty").hidden = data.length > 0;
    $("#list").append(...data.map(card)); // newest first, as the API lists them
    for (const batch of data) {
      const node = card(batch);
      if (!node.dataset.final) show(node, batch);
      // a stream gives a running batch's live numbers, and an ended one's usage, files and first errors, once
      if (!node.dataset.final && !streams.has(batch.id) && streams.size < MAX_STREAMS) {
        if (TERMINAL.has(batch.status)) node.dataset.final = "1";
        follow(batch.id);
      }
    }
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error.message !== "unauthorized") $("#updated").textContent = `could not refresh: ${error.message}`;
  }
  if (sessionStorage.getItem(KEY)) listTimer = setTimeout(listBatches, LIST_EVERY_MS);
}

function signedIn() {
  $("#signin").hidden = true;
  $("#batches").hidden = false;
  $("#session").hidden = false;
  $("#who").textContent = `key …${sessionStorage.getItem(KEY).slice(-4)}`;
  listBatches();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  clearTimeout(listTimer);
  for (const controller of streams.values()) controller.abort();
  streams.clear();
  series.clear();
  latest.clear();
  $("#list").replaceChildren();
  $("#batches").hidden = true;
  $("#session").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#signin").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("#api-key").value.trim());
    $("#api-key").value = "";
    $("#signin-error").textContent = "";
    signedIn();
  });
  $("#signout").addEventListener("click", () => signOut());
  $("#refresh").addEventListener("click", () => listBatches());
  if (sessionStorage.getItem(KEY)) signedIn();
});
