// The llm-service console: one ES module, no build step. It talks to the same API as any client
// (OAuth2 password flow for the access token, then Bearer on every request). The token lives
// only in this module's memory: never in a cookie, localStorage or the DOM, so another page or a
// stored value cannot leak it; the page's Content-Security-Policy allows no other script.
import { renderMarkdown } from "./markdown.js";

const $ = (selector) => document.querySelector(selector);
let token = null;
let me = null;
let conversation = [];
let running = null; // the AbortController of the generation in progress
let livePoll = null;
let lastTokens = null;
let session = 0; // bumped at sign-in and sign-out: late answers of an earlier session are dropped

// --- The API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, form, signal, raw = false } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (form) {
    headers["Content-Type"] = "application/x-www-form-urlencoded";
    payload = new URLSearchParams(form).toString();
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload, signal });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const error = await response.json();
      message = error.error?.message || error.detail || message;
    } catch {}
    if (response.status === 401 && token) {
      signOut("Your session has ended: sign in again.");
    }
    throw new ApiError(response.status, message);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

function notify(message, ok = false) {
  const notice = $("#notice");
  notice.textContent = message;
  notice.classList.toggle("ok", ok);
  notice.hidden = !message;
}

async function guarded(action) {
  const mine = session;
  notify("");
  try {
    await action();
  } catch (error) {
    if (error.name !== "AbortError" && mine === session) notify(error.message);
  }
}

// For the live view's timer: its errors show, but it never clears another action's notice.
async function quietly(action) {
  const mine = session;
  try {
    await action();
  } catch (error) {
    if (mine === session) notify(error.message);
  }
}

// --- Views ------------------------------------------------------------------------------------

function show(view) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const button of document.querySelectorAll("nav [data-view]")) {
    if (button.dataset.view === view) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  clearInterval(livePoll);
  livePoll = null;
  if (view === "account") guarded(loadAccount);
  if (view === "admin") {
    guarded(loadUsers);
    lastTokens = null;
    guarded(refreshLive);
    livePoll = setInterval(() => quietly(refreshLive), 3000);
  }
  const heading = document.querySelector(`#view-${view} h2`);
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

async function signIn(username, password) {
  const answer = await api("/token", { method: "POST", form: { grant_type: "password", username, password } });
  session += 1;
  token = answer.access_token;
  me = await api("/users/me");
  $("#whoami").textContent = `${me.username}${me.is_admin ? " (admin)" : ""}`;
  $("#nav-admin").hidden = !me.is_admin;
  $("#nav").hidden = false;
  $("#signin-form").reset();
  await loadModels();
  show("chat");
}

function signOut(message = "") {
  session += 1;
  if (running) running.abort();
  token = null;
  me = null;
  conversation = [];
  // Nothing of this session stays on the page for the next person at this browser.
  $("#transcript").replaceChildren();
  for (const form of document.querySelectorAll("form")) form.reset();
  $("#chat-system").value = "";
  $("#new-key-value").value = "";
  $("#new-key").hidden = true;
  for (const body of document.querySelectorAll("tbody")) body.replaceChildren();
  $("#live").replaceChildren();
  $("#usage-limits").textContent = "";
  $("#nav").hidden = true;
  show("signin");
  notify(message);
}

// --- Chat -------------------------------------------------------------------------------------

async function loadModels() {
  const models = await api("/v1/models");
  const select = $("#chat-model");
  select.replaceChildren(
    ...models.data
      .filter((model) => model.kind !== "embedding")
      .map((model) => new Option(model.id, model.id))
  );
}

function addTurn(role, text) {
  const item = document.createElement("li");
  item.className = role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const content = document.createElement("div");
  content.className = "content";
  if (role === "user") content.textContent = text;
  const stats = document.createElement("p");
  stats.className = "stats";
  item.append(who, content, stats);
  $("#transcript").append(item);
  return { content, stats };
}

async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function send(text) {
  const system = $("#chat-system").value.trim();
  const convo = conversation; // "New conversation" or sign-out during the answer replaces it
  convo.push({ role: "user", content: text });
  addTurn("user", text);
  const { content, stats } = addTurn("assistant", "");
  const item = content.parentElement;
  item.setAttribute("aria-busy", "true"); // announced once, when complete
  const body = {
    model: $("#chat-model").value,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...convo],
    temperature: Number($("#chat-temperature").value),
    max_tokens: Number($("#chat-max-tokens").value) || undefined, // empty: the service's default
    stream: true,
    stream_options: { include_usage: true },
  };
  running = new AbortController();
  $("#chat-stop").disabled = false;
  $("#chat-send").disabled = true;
  const started = performance.now();
  let first = null;
  let answer = "";
  let usage = null;
  let pending = false;
  const paint = () => {
    pending = false;
    content.innerHTML = renderMarkdown(answer);
  };
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body, signal: running.signal, raw: true });
    for await (const data of events(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        first ??= performance.now();
        answer += delta;
        if (!pending) {
          pending = true;
          requestAnimationFrame(paint);
        }
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") {
      notify(
        error.status === 400 && /context/i.test(error.message)
          ? `${error.message} Start a new conversation, or shorten the message.`
          : error.message
      );
    }
  } finally {
    const ended = performance.now();
    paint();
    const stopped = running?.signal.aborted;
    running = null;
    item.removeAttribute("aria-busy");
    $("#chat-stop").disabled = true;
    $("#chat-send").disabled = false;
    if (convo === conversation) {
      if (answer) {
        convo.push({ role: "assistant", content: answer });
      } else if (!stopped) {
        // Nothing came back (refused, or failed before the first token): the question is
        // taken back, so the next one is not sent after an unanswered one.
        convo.pop();
        item.previousElementSibling?.remove();
        item.remove();
        $("#chat-input").value ||= text;
      }
      $("#chat-input").focus();
    }
    const parts = [];
    if (first !== null) parts.push(`first token ${Math.round(first - started)} ms`);
    const generated = usage?.completion_tokens;
    if (generated && first !== null && ended > first) {
      parts.push(`${generated} tokens, ${(generated / ((ended - first) / 1000)).toFixed(1)} tokens/s`);
    }
    if (stopped) parts.push("stopped");
    stats.textContent = parts.join(" · ");
    stats.dataset.done = "true";
  }
}

// --- Account ----------------------------------------------------------------------------------

const day = (unix) => (unix ? new Date(unix * 1000).toISOString().slice(0, 16).replace("T", " ") : "never");

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function button(label, action, className = "secondary") {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  element.className = className;
  element.addEventListener("click", () => guarded(action));
  return element;
}

async function loadAccount() {
  const mine = session;
  const [usage, keys] = await Promise.all([api("/users/me/usage?days=30"), api("/users/me/api-keys")]);
  if (mine !== session) return;
  const limit = (value, unit) => (value ? `${value.toLocaleString()} ${unit}` : `no limit on ${unit}`);
  const left = usage.tokens_per_day ? Math.max(usage.tokens_per_day - usage.tokens_today, 0) : null;
  $("#usage-limits").textContent =
    `Limits: ${limit(usage.requests_per_minute, "requests per minute")}, ` +
    `${limit(usage.tokens_per_day, "tokens per day")}. Today: ${usage.tokens_today.toLocaleString()} tokens used` +
    (left === null ? "." : `, ${left.toLocaleString()} left.`);
  drawChart(usage.days);
  $("#usage-table tbody").replaceChildren(
    ...usage.days.map((d) => {
      const row = document.createElement("tr");
      row.append(cell(d.day), cell(d.requests), cell(d.prompt_tokens), cell(d.completion_tokens), cell(d.embedding_tokens));
      return row;
    })
  );
  $("#keys-table tbody").replaceChildren(
    ...keys.map((key) => {
      const row = document.createElement("tr");
      const actions = document.createElement("td");
      const revoke = button(
        "Revoke",
        async () => {
          if (!confirm(`Revoke the key "${key.name}"? Programs using it stop working.`)) return;
          await api(`/users/me/api-keys/${key.id}`, { method: "DELETE" });
          notify(`Revoked "${key.name}".`, true);
          await loadAccount();
        },
        "danger"
      );
      revoke.setAttribute("aria-label", `Revoke ${key.name}`);
      actions.append(revoke);
      row.append(cell(key.name), cell(`${key.prefix}…`), cell(day(key.created_at)), cell(day(key.last_used_at)), actions);
      return row;
    })
  );
}

function drawChart(days) {
  const svg = $("#usage-chart");
  const title = svg.querySelector("title");
  const byDay = new Map(days.map((d) => [d.day, d.prompt_tokens + d.completion_tokens + d.embedding_tokens]));
  const values = [];
  const today = new Date();
  for (let i = 29; i >= 0; i--) {
    const date = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
    const key = date.toISOString().slice(0, 10);
    values.push([key, byDay.get(key) || 0]);
  }
  const top = Math.max(1, ...values.map(([, v]) => v));
  const width = 600 / values.length;
  const bars = values.map(([key, value], i) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const height = (value / top) * 190;
    rect.setAttribute("x", String(i * width + 1));
    rect.setAttribute("y", String(200 - height));
    rect.setAttribute("width", String(width - 2));
    rect.setAttribute("height", String(height));
    const tip = document.createElementNS("http://www.w3.org/2000/svg", "title");
    tip.textContent = `${key}: ${value.toLocaleString()} tokens`;
    rect.append(tip);
    return rect;
  });
  svg.replaceChildren(title, ...bars);
}

// --- Admin ------------------------------------------------------------------------------------

async function loadUsers() {
  const mine = session;
  const users = await api("/admin/users");
  if (mine !== session) return;
  $("#users-table tbody").replaceChildren(...users.map(userRow));
}

function limitInput(user, field, label) {
  const input = document.createElement("input");
  input.type = "number";
  input.min = "0";
  input.value = user[field] ?? "";
  input.placeholder = "default";
  input.setAttribute("aria-label", `${label} for ${user.username}`);
  return input;
}

function userRow(user) {
  const row = document.createElement("tr");
  const change = (fields, done) => async () => {
    await api(`/admin/users/${encodeURIComponent(user.username)}`, { method: "PATCH", body: fields });
    notify(done, true);
    await loadUsers();
  };
  const rpm = limitInput(user, "requests_per_minute", "Requests per minute");
  const tpd = limitInput(user, "tokens_per_day", "Tokens per day");
  const number = (input) => (input.value === "" ? null : Number(input.value));
  const actions = document.createElement("td");
  const group = document.createElement("div");
  group.className = "row";
  const named = (element, label) => {
    element.setAttribute("aria-label", `${label} ${user.username}`);
    return element;
  };
  group.append(
    named(
      // The inputs are read when clicked, not when drawn.
      button("Save limits", () =>
        change({ requests_per_minute: number(rpm), tokens_per_day: number(tpd) }, `Saved ${user.username}'s limits.`)()
      ),
      "Save limits of"
    ),
    named(
      button(user.disabled ? "Enable" : "Disable", change({ disabled: !user.disabled }, `${user.disabled ? "Enabled" : "Disabled"} ${user.username}.`)),
      user.disabled ? "Enable" : "Disable"
    ),
    named(
      button(user.is_admin ? "Demote" : "Promote", change({ is_admin: !user.is_admin }, `${user.username} is ${user.is_admin ? "no longer" : "now"} an admin.`)),
      user.is_admin ? "Demote" : "Promote"
    ),
    named(
      button(
        "Delete",
        async () => {
          if (!confirm(`Delete ${user.username}, their keys and usage?`)) return;
          await api(`/admin/users/${encodeURIComponent(user.username)}`, { method: "DELETE" });
          notify(`Deleted ${user.username}.`, true);
          await loadUsers();
        },
        "danger"
      ),
      "Delete"
    )
  );
  actions.append(group);
  const limits = (input) => {
    const td = document.createElement("td");
    td.append(input);
    return td;
  };
  row.dataset.user = user.username;
  row.append(cell(user.username), cell(user.is_admin ? "admin" : "user"), cell(user.disabled ? "disabled" : "enabled"), limits(rpm), limits(tpd), actions);
  return row;
}

function metric(text, name) {
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) total += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return total;
}

async function refreshLive() {
  const mine = session;
  const health = await (await fetch("/health")).json();
  let rate = "…";
  try {
    // Not on this port when APP_METRICS_LISTEN moves /metrics elsewhere: then no rate.
    const tokens = metric(await api("/metrics"), "llm_tokens_predicted_total");
    const now = performance.now();
    if (lastTokens) rate = ((tokens - lastTokens.tokens) / ((now - lastTokens.at) / 1000)).toFixed(1);
    lastTokens = { tokens, at: now };
  } catch (error) {
    if (error.status !== 404) throw error;
    rate = "n/a";
  }
  if (mine !== session) return;
  const loaded = (health.models || []).map((m) => `${m.id} (${m.state})`).join(", ") || health.model;
  const items = [
    ["Status", health.status],
    ["Models", loaded],
    ["Slots busy", `${health.slots_busy ?? 0} of ${health.slots ?? "?"}`],
    ["Queue", health.queue ?? 0],
    ["Tokens/s", rate],
  ];
  $("#live").replaceChildren(
    ...items.map(([label, value]) => {
      const box = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dd.dataset.live = label;
      box.append(dt, dd);
      return box;
    })
  );
}

// --- Wiring -----------------------------------------------------------------------------------

$("#signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(() => signIn($("#signin-username").value, $("#signin-password").value));
});
$("#register").addEventListener("click", () =>
  guarded(async () => {
    const form = $("#signin-form");
    if (!form.reportValidity()) return;
    const username = $("#signin-username").value;
    const password = $("#signin-password").value;
    await api("/register", { method: "POST", body: { username, password } });
    await signIn(username, password);
  })
);
$("#signout").addEventListener("click", () => signOut());
for (const navButton of document.querySelectorAll("nav [data-view]")) {
  navButton.addEventListener("click", () => show(navButton.dataset.view));
}
$("#chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text || running) return;
  $("#chat-input").value = "";
  send(text);
});
$("#chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("#chat-form").requestSubmit();
  }
});
$("#chat-stop").addEventListener("click", () => running?.abort());
$("#chat-clear").addEventListener("click", () => {
  running?.abort();
  conversation = [];
  $("#transcript").replaceChildren();
});
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    const created = await api("/users/me/api-keys", { method: "POST", body: { name: $("#key-name").value } });
    $("#new-key-value").value = created.key;
    $("#new-key").hidden = false;
    $("#key-form").reset();
    await loadAccount();
  });
});
$("#new-key-copy").addEventListener("click", () =>
  guarded(async () => {
    await navigator.clipboard.writeText($("#new-key-value").value);
    notify("Copied.", true);
  })
);
$("#password-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    await api("/users/me/password", {
      method: "POST",
      body: { current_password: $("#password-current").value, new_password: $("#password-new").value },
    });
    $("#password-form").reset();
    signOut("Password changed: sign in with the new one.");
  });
});
$("#user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    await api("/admin/users", {
      method: "POST",
      body: { username: $("#user-name").value, password: $("#user-password").value, is_admin: $("#user-admin").checked },
    });
    notify(`Created ${$("#user-name").value}.`, true);
    $("#user-form").reset();
    await loadUsers();
  });
});
document.body.dataset.ready = "true";
