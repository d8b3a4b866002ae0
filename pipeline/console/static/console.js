// The live queue: reads /api/queue, re-reads it on every server-sent event, and sends verdicts.
"use strict";
const csrf = document.querySelector('meta[name="csrf"]').content;
const me = document.querySelector('meta[name="user"]').content;
const LABELS = JSON.parse(document.getElementById("labels").textContent);
const filters = document.getElementById("filters");
const queue = document.getElementById("queue");
let items = [];
let selected = 0;
let overturning = null; // {id, labels: {label: 0|1}}
let pending = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function flash(text) {
  const f = document.getElementById("flash");
  f.textContent = text;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { f.textContent = ""; }, 6000);
}

// spans are code-point offsets into the text as sent
function highlighted(text, spans) {
  const chars = Array.from(text);
  const out = el("p", {class: "text"});
  let pos = 0;
  for (const s of [...spans].sort((a, b) => a.start - b.start)) {
    if (s.start < pos) continue;
    out.append(chars.slice(pos, s.start).join(""));
    out.append(el("mark", {title: `${s.label} ${s.score.toFixed(2)}`}, chars.slice(s.start, s.end).join("")));
    pos = s.end;
  }
  out.append(chars.slice(pos).join(""));
  return out;
}

function scores(result) {
  const top = Object.entries(result.toxicity).sort((a, b) => b[1] - a[1]).slice(0, 4);
  return el("ul", {class: "scores"}, ...top.map(([k, v]) => {
    const bar = el("span", {class: "bar"});
    bar.style.width = `${Math.round(v * 100)}%`; // CSSOM: allowed under the page's CSP, unlike a style attribute
    return el("li", {}, bar, el("span", {class: "score"}, `${k} ${v.toFixed(2)}`));
  }));
}

function card(item, index) {
  const r = item.result;
  const mine = item.holder === me;
  const node = el("article", {class: `item ${r.decision}${index === selected ? " selected" : ""}`, "data-id": r.id,
                              tabindex: "-1", onclick: () => { selected = index; render(); }},
    el("header", {},
      el("span", {class: `decision ${r.decision}`}, r.decision),
      el("span", {}, `#${r.channel || "-"}`), el("span", {}, `@${r.user || "-"}`),
      item.strikes !== null && item.strikes !== undefined ? el("span", {class: "strikes"}, `strikes ${item.strikes}`) : null,
      r.profile ? el("span", {class: "profile"}, r.profile) : null,
      el("span", {class: "models"}, [...new Set(Object.values(r.models || {}))].join(" · ")),
      item.holder ? el("span", {class: mine ? "holder mine" : "holder"}, mine ? "claimed by you" : `${item.holder} has it`) : null),
    highlighted(r.text || "", r.spans || []),
    el("div", {class: "why"}, scores(r),
      el("ul", {class: "reasons"}, ...(r.reasons || []).map((x) => el("li", {}, x)), ...(r.flags || []).map((x) => el("li", {class: "flag"}, x)))),
    el("div", {class: "actions"},
      el("button", {type: "button", onclick: (e) => { e.stopPropagation(); act("claim", r.id); }}, item.holder && mine ? "Release (c)" : "Claim (c)"),
      el("button", {type: "button", class: "confirm", onclick: (e) => { e.stopPropagation(); act("confirm", r.id); }}, "Confirm (y)"),
      el("button", {type: "button", class: "overturn", onclick: (e) => { e.stopPropagation(); act("overturn", r.id); }}, "Overturn (n)")));
  if (overturning && overturning.id === r.id) {
    node.append(el("form", {class: "labels", onsubmit: (e) => { e.preventDefault(); sendOverturn(); }},
      el("span", {}, "Corrected labels (none checked: not toxic):"),
      ...LABELS.map((label, i) => el("label", {}, (() => {
        const box = el("input", {type: "checkbox", name: label, onchange: (e) => { overturning.labels[label] = e.target.checked ? 1 : 0; }});
        box.checked = overturning.labels[label] === 1;
        return box;
      })(), ` ${i + 1} ${label}`)),
      el("button", {type: "submit"}, "Send overturn (Enter)")));
  }
  return node;
}

function render() {
  selected = Math.max(0, Math.min(selected, items.length - 1));
  queue.replaceChildren(...(items.length ? items.map(card) : [el("p", {class: "empty"}, "Nothing waiting. New flagged messages appear here as they arrive.")]));
  const current = queue.querySelector(".selected");
  if (current) current.scrollIntoView({block: "nearest"});
}

function renderCounts(v) {
  const published = Object.entries(v.published).map(([t, n]) => `${t} ${n}`).join(", ") || "none yet";
  const store = v.store ? Object.entries(v.store).map(([t, n]) => `${t} ${n}`).join(", ") : "the feedback store is not visible here";
  document.getElementById("counts").textContent = `${items.length} waiting · verdicts sent: ${published} · next retrain uses: ${store}`;
}

async function load() {
  lastLoad = Date.now();
  const params = new URLSearchParams(new FormData(filters));
  for (const [k, v] of [...params]) if (!v) params.delete(k);
  const response = await fetch(`/api/queue?${params}`, {credentials: "same-origin"});
  if (response.status === 401) { location.href = "/login"; return; }
  const data = await response.json();
  const id = items[selected] && items[selected].result.id;
  items = data.items;
  const keep = items.findIndex((i) => i.result.id === id);
  if (keep >= 0) selected = keep;
  renderCounts(data.verdicts);
  render();
}

// Events can come hundreds a second: the queue is re-read at most once a second for them (a busy queue
// then costs the console ten reads a second for ten open pages), and at once after this page's own actions.
let lastLoad = 0;
function reload(now) {
  if (now === true) { clearTimeout(pending); pending = null; load(); return; }
  if (pending) return;
  pending = setTimeout(() => { pending = null; load(); }, Math.max(100, 1000 - (Date.now() - lastLoad)));
}

async function post(url, body) {
  const response = await fetch(url, {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body || {})});
  const data = await response.json().catch(() => ({}));
  if (!response.ok) flash(data.error || response.statusText);
  return response.ok;
}

async function act(action, id) {
  const item = items.find((i) => i.result.id === id);
  if (!item) return;
  if (action === "claim") {
    const mine = item.holder === me;
    await post(`/api/items/${encodeURIComponent(id)}/${mine ? "release" : "claim"}`);
  } else if (action === "confirm") {
    if (await post(`/api/items/${encodeURIComponent(id)}/verdict`, {action: "confirm"})) flash("confirmed");
  } else if (action === "overturn") {
    overturning = {id, labels: Object.fromEntries(LABELS.map((l) => [l, 0]))};
    render();
    return;
  }
  reload(true);
}

async function sendOverturn() {
  const o = overturning;
  overturning = null;
  if (await post(`/api/items/${encodeURIComponent(o.id)}/verdict`, {action: "overturn", labels: o.labels})) flash("overturned");
  reload(true);
}

document.addEventListener("keydown", (e) => {
  if (e.target.matches("input[type=text], input:not([type]), select, textarea")) return;
  const item = items[selected];
  if (overturning) {
    if (e.key === "Escape") { overturning = null; render(); }
    else if (e.key === "Enter") { e.preventDefault(); sendOverturn(); }
    else if (/^[1-9]$/.test(e.key) && LABELS[Number(e.key) - 1]) {
      const label = LABELS[Number(e.key) - 1];
      overturning.labels[label] = overturning.labels[label] ? 0 : 1;
      render();
    }
    return;
  }
  if (e.key === "j" || e.key === "ArrowDown") { selected += 1; render(); }
  else if (e.key === "k" || e.key === "ArrowUp") { selected -= 1; render(); }
  else if (item && e.key === "c") act("claim", item.result.id);
  else if (item && e.key === "y") act("confirm", item.result.id);
  else if (item && e.key === "n") act("overturn", item.result.id);
  else return;
  e.preventDefault();
});

filters.addEventListener("input", () => reload(true));
const live = document.getElementById("live");
const events = new EventSource("/events");
events.onopen = () => { live.textContent = "live"; live.className = "on"; };
events.onerror = () => { live.textContent = "reconnecting…"; live.className = "off"; };
events.onmessage = reload;
load();
