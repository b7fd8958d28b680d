// feather's web view. Everything the server sends that a VM may have chosen (process command
// lines, file names, audit objects, error messages quoting them) goes into the page through
// text nodes only: `el` never parses markup.
"use strict";

const state = {
  csrf: null,
  key: null,          // the session's key (see keepSessionKey): sent with every API request
  vms: null,          // the last VM table the server pushed
  audit: [],          // audit entries, oldest first
  lastContact: null,  // when the live feed last spoke
  connected: false,
  jobs: {},           // long actions by id, as their events arrived
  asks: [],           // questions of `ask` rules waiting for an answer
};

// ---- small helpers -------------------------------------------------------------------------

/// An element with attributes and children; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    // Through the CSSOM: the page's content security policy refuses style attributes.
    else if (key === "style") for (const [p, v] of Object.entries(value)) node.style.setProperty(p, v);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "K", "M", "G", "T"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + units[i];
}

function age(seconds) {
  const s = Math.max(0, Math.floor(Date.now() / 1000 - seconds));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m";
  if (s < 86400) return Math.floor(s / 3600) + "h";
  return Math.floor(s / 86400) + "d";
}

function limits(l) {
  const parts = [];
  if (l.memory) parts.push("mem " + bytes(l.memory));
  if (l.pids) parts.push("pids " + l.pids);
  if (l.cpus) parts.push("cpus " + l.cpus);
  if (l.disk) parts.push("disk " + bytes(l.disk));
  return parts.join(" ") || "none";
}

function notice(text, kind) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = "notice " + (kind || "error");
  box.hidden = !text;
  if (text && kind === "ok") setTimeout(() => { if (box.textContent === text) box.hidden = true; }, 4000);
}

/// The session is a cookie and a key. The browser sends the cookie to every port of this host
/// (a VM's service published on another port gets it too); the key the login answered in the
/// page itself, and it is kept in this origin's localStorage, which no page of another port
/// reads. Every API request shows it. localStorage, not sessionStorage: other tabs of this
/// address (one login link serves one browser) and reloads find it.
const KEY_ITEM = "feather-session";

function keepSessionKey() {
  const given = document.querySelector('meta[name="feather-session"]');
  if (given) {
    localStorage.setItem(KEY_ITEM, given.content);
    given.remove();
    // The login link is spent: a reload loads the page itself.
    history.replaceState(null, "", "/" + location.hash);
  }
  state.key = localStorage.getItem(KEY_ITEM) || "";
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json", "X-Feather-Session": state.key };
  if (method !== "GET") headers["X-Feather-Csrf"] = state.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = null;
  try { answer = await response.json(); } catch (_) { /* an empty answer */ }
  if (!response.ok) {
    throw new Error((answer && answer.error) || (response.status + " " + response.statusText));
  }
  return answer;
}

/// Runs a state-changing request with the button busy; shows its error on the page.
async function act(button, what, call) {
  if (button) button.disabled = true;
  try {
    const answer = await call();
    notice(what, "ok");
    return answer;
  } catch (e) {
    notice(e.message, "error");
    return null;
  } finally {
    if (button) button.disabled = false;
  }
}

// Paths a VM named, one per line, each with its control characters escaped: a name such as
// "x, /data/other" or one holding a line break cannot read as more or other paths.
function pathLines(paths) {
  return paths.map((path) => "\n  " + path.replace(/[\x00-\x1f\x7f]/g,
    (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"))).join("");
}

function confirmAction(text, okLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// What "only refusals" shows: as `feather audit --denied`, refusals and failures, and the
// `held` lines (a VM's decisions past its pace, counted) that counted a refusal.
function isRefusal(e) {
  if (e.outcome === "held") {
    const denied = /(\d+) denied/.exec(e.detail || "");
    return denied !== null && Number(denied[1]) > 0;
  }
  return e.outcome !== "allowed";
}

function badge(status) {
  return el("span", { class: "badge " + status }, status);
}

// ---- the live feed --------------------------------------------------------------------------

/// A stream of server-sent events, read as EventSource reads one (named events, `data:`
/// lines, "open" and "error", a new try 3 s after it broke) but through fetch, since
/// EventSource cannot send the session's key. `close()` ends it for good.
function eventFeed(path) {
  const listeners = {};
  let closed = false;
  let controller = null;
  const emit = (type, data) => (listeners[type] || []).forEach((listener) => listener({ type, data }));
  const dispatch = (block) => {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;  // a comment: the keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (data.length > 0) emit(type, data.join("\n"));
  };
  const read = async () => {
    controller = new AbortController();
    const response = await fetch(path, {
      headers: { "Accept": "text/event-stream", "X-Feather-Session": state.key },
      credentials: "same-origin", cache: "no-store", signal: controller.signal,
    });
    if (!response.ok) return;
    emit("open", "");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  };
  (async () => {
    while (!closed) {
      try { await read(); } catch (_) { /* the server went away, or close() */ }
      if (closed) return;
      emit("error", "");
      await new Promise((resolve) => setTimeout(resolve, 3000));
    }
  })();
  return {
    addEventListener(type, listener) { (listeners[type] = listeners[type] || []).push(listener); },
    close() { closed = true; if (controller) controller.abort(); },
  };
}

function connect() {
  const feed = eventFeed("/api/events");
  feed.addEventListener("open", () => { state.connected = true; touch(); });
  feed.addEventListener("vms", (event) => {
    touch();
    state.vms = JSON.parse(event.data);
    if (route().view === "vms") renderVmTable();
    if (route().view === "vm") refreshVmHeader();
  });
  feed.addEventListener("audit", (event) => {
    touch();
    state.audit.push(JSON.parse(event.data));
    if (route().view === "shuttle") renderAudit();
  });
  feed.addEventListener("asks", (event) => {
    touch();
    state.asks = JSON.parse(event.data);
    renderAsks();
  });
  feed.addEventListener("job", (event) => {
    touch();
    const job = JSON.parse(event.data);
    const known = state.jobs[job.id] || {};
    if (job.phase) { delete known.done; delete known.total; }  // a new step's bytes start anew
    state.jobs[job.id] = Object.assign(known, job);
    showJob(state.jobs[job.id]);
  });
  feed.addEventListener("error", () => { state.connected = false; showContact(); });
}

function touch() {
  state.lastContact = new Date();
  state.connected = true;
  showContact();
}

function showContact() {
  const badgeNode = document.getElementById("contact");
  if (state.connected) {
    badgeNode.textContent = "live";
    badgeNode.className = "contact live";
    document.body.classList.remove("stale");
  } else {
    const since = state.lastContact ? " since " + state.lastContact.toLocaleTimeString() : "";
    badgeNode.textContent = "lost contact" + since + " — retrying";
    badgeNode.className = "contact lost";
    // What is on the page may no longer be true: it is shown faded until contact returns.
    document.body.classList.add("stale");
  }
}

// ---- routing --------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const vm = hash.match(/^\/vm\/([^/]+)$/);
  if (vm) return { view: "vm", name: decodeURIComponent(vm[1]) };
  if (hash === "/shuttle") return { view: "shuttle" };
  return { view: "vms" };
}

function render() {
  const r = route();
  document.getElementById("nav-vms").classList.toggle("here", r.view !== "shuttle");
  document.getElementById("nav-shuttle").classList.toggle("here", r.view === "shuttle");
  notice("");
  closeFeeds();
  if (r.view === "vm") renderVm(r.name);
  else if (r.view === "shuttle") renderShuttle();
  else renderVms();
}

// ---- VMs ------------------------------------------------------------------------------------

function renderVms() {
  const main = document.getElementById("main");
  main.replaceChildren(
    el("section", { class: "bar" },
      el("h1", {}, "Virtual machines"),
      el("button", { id: "new-vm", onclick: () => newVmForm() }, "New VM")),
    el("div", { id: "new-vm-form" }),
    el("div", { id: "vm-table" }, el("p", { class: "quiet" }, "loading…")));
  renderVmTable();
}

function renderVmTable() {
  const holder = document.getElementById("vm-table");
  if (!holder || state.vms === null) return;
  if (state.vms.error) { holder.replaceChildren(el("p", { class: "error" }, state.vms.error)); return; }
  const vms = state.vms.vms;
  if (vms.length === 0) {
    holder.replaceChildren(el("p", { class: "quiet" }, "No VMs in this state root yet: make one with New VM."));
    return;
  }
  const rows = vms.map((vm) => el("tr", { "data-vm": vm.name },
    el("td", { "data-label": "Name" }, el("a", { href: "#/vm/" + encodeURIComponent(vm.name) }, vm.name)),
    el("td", { "data-label": "State" }, badge(vm.status)),
    el("td", { "data-label": "Processes", class: "num" }, vm.processes),
    el("td", { "data-label": "Memory", class: "num" }, bytes(vm.memory_bytes)),
    el("td", { "data-label": "Limits" }, limits(vm.limits)),
    el("td", { "data-label": "Network" }, vm.network),
    el("td", { "data-label": "Base" }, vm.base),
    el("td", { "data-label": "Age" }, age(vm.created)),
    el("td", { class: "actions" }, vmActions(vm))));
  holder.replaceChildren(el("table", { class: "vms" },
    el("thead", {}, el("tr", {}, ["Name", "State", "Processes", "Memory", "Limits", "Network", "Base", "Age", ""]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
}

function vmActions(vm) {
  const running = vm.status === "running";
  const name = vm.name;
  return [
    running
      ? el("button", { class: "quiet", "data-action": "stop", onclick: (e) => stopVm(e.target, name) }, "Stop")
      : el("button", { class: "quiet", "data-action": "start", onclick: (e) => startVm(e.target, name) }, "Start"),
    el("button", { class: "danger quiet", "data-action": "remove", onclick: (e) => removeVm(e.target, name, running) }, "Remove"),
  ];
}

async function startVm(button, name) {
  await act(button, "VM " + name + " started", () => api("POST", "/api/vms/" + encodeURIComponent(name) + "/start"));
}

async function stopVm(button, name) {
  await act(button, "VM " + name + " stopped", () => api("POST", "/api/vms/" + encodeURIComponent(name) + "/stop"));
}

async function removeVm(button, name, running) {
  const text = "Remove VM " + name + "? Its layer, with every change it made that was not committed, is deleted"
    + (running ? "; it is running and will be stopped first." : ".");
  if (!(await confirmAction(text, "Remove " + name))) return;
  const done = await act(button, "VM " + name + " removed",
    () => api("DELETE", "/api/vms/" + encodeURIComponent(name) + "?force=" + running));
  if (done && route().view === "vm") location.hash = "#/";
}

function newVmForm() {
  const holder = document.getElementById("new-vm-form");
  if (holder.firstChild) { holder.replaceChildren(); return; }
  const field = (label, name, attrs) => el("label", {}, label, el("input", Object.assign({ name }, attrs || {})));
  const form = el("form", { class: "card grid", id: "create-form", onsubmit: (e) => { e.preventDefault(); createVm(form); } },
    field("Name", "name", { required: true, pattern: "[a-z0-9][a-z0-9-]*", placeholder: "web1", autocomplete: "off" }),
    field("Base", "base", { placeholder: "/ (the host)" }),
    field("Memory", "memory", { placeholder: "none, e.g. 512M" }),
    field("Processes", "pids", { placeholder: "2048, or max" }),
    field("CPUs", "cpus", { placeholder: "none, e.g. 0.5" }),
    el("label", {}, "Network", el("select", { name: "net" },
      el("option", { value: "private" }, "private (own address)"),
      el("option", { value: "none" }, "none (loopback only)"),
      el("option", { value: "host" }, "host (not confined)"))),
    field("Published ports", "publish", { placeholder: "8080:80, 5353:53/udp" }),
    field("Tags", "tags", { placeholder: "web, db" }),
    field("Services", "services", { placeholder: "host units, e.g. nginx, redis-server" }),
    field("Read-only paths", "ro", { placeholder: "seen as the base has them, e.g. /usr" }),
    el("div", { class: "buttons" },
      el("button", { type: "submit", id: "create-submit" }, "Create"),
      el("button", { type: "button", class: "quiet", onclick: () => holder.replaceChildren() }, "Cancel")));
  holder.replaceChildren(form);
  form.elements.name.focus();
}

async function createVm(form) {
  const value = (name) => form.elements[name].value.trim();
  const list = (name) => value(name).split(",").map((s) => s.trim()).filter(Boolean);
  const request = { name: value("name"), net: value("net"), publish: list("publish"), tags: list("tags"), services: list("services"), ro: list("ro") };
  for (const optional of ["base", "memory", "pids", "cpus"]) {
    if (value(optional)) request[optional] = value(optional);
  }
  const done = await act(form.querySelector("#create-submit"), "VM " + request.name + " created",
    () => api("POST", "/api/vms", request));
  if (done) document.getElementById("new-vm-form").replaceChildren();
}

// ---- one VM ---------------------------------------------------------------------------------

async function renderVm(name) {
  const main = document.getElementById("main");
  main.replaceChildren(
    el("section", { class: "bar" },
      el("h1", {}, el("a", { href: "#/", class: "quiet" }, "VMs"), " / ", name),
      el("span", { id: "vm-status" }),
      el("span", { id: "vm-actions", class: "actions" })),
    el("section", { class: "card" }, el("h2", {}, "Overview"), el("dl", { id: "vm-overview", class: "facts" })),
    el("section", { class: "card" },
      el("div", { class: "bar" }, el("h2", {}, "Checkpoint, migration, IPC check"),
        el("span", { class: "actions" },
          el("button", { id: "checkpoint-vm", class: "quiet", onclick: (e) => checkpointVm(e.target, name, false) }, "Checkpoint"),
          el("button", { id: "checkpoint-running", class: "quiet", onclick: (e) => checkpointVm(e.target, name, true) }, "Checkpoint, leave running"),
          el("button", { id: "restore-vm", class: "quiet", onclick: (e) => startJob(e.target, name, "restore", {}) }, "Restore"),
          el("button", { id: "migrate-vm", class: "quiet", onclick: () => migrateForm(name) }, "Migrate…"),
          el("button", { id: "check-ipc", class: "quiet", onclick: (e) => startJob(e.target, name, "ipc", {}) }, "Check IPC"))),
      el("div", { id: "migrate-form" }),
      el("p", { id: "vm-job", class: "job quiet" }, ""),
      el("div", { id: "ipc-matrix" })),
    el("section", { class: "card" },
      el("div", { class: "bar" }, el("h2", {}, "Services"),
        el("form", { id: "service-start", class: "inline", onsubmit: (e) => { e.preventDefault(); startService(e.target, name); } },
          el("input", { name: "unit", placeholder: "a host unit, e.g. nginx", required: true, autocomplete: "off" }),
          el("button", { type: "submit" }, "Start"))),
      el("div", { id: "vm-services" }, "loading…"),
      el("div", { id: "service-log-box", hidden: true },
        el("div", { class: "bar" }, el("h2", { id: "service-log-title" }, "Log"),
          el("button", { class: "quiet", onclick: closeLog }, "Close")),
        el("pre", { id: "service-log", class: "log" }))),
    el("section", { class: "card" },
      el("div", { class: "bar" }, el("h2", {}, "Terminal"),
        el("button", { id: "open-terminal", class: "quiet", onclick: () => openTerminal(name) }, "Open a shell")),
      el("div", { id: "terminal" })),
    el("section", { class: "card" }, el("h2", {}, "Processes"), el("div", { id: "vm-processes" }, "loading…")),
    el("section", { class: "card" },
      el("div", { class: "bar" }, el("h2", {}, "Changes on disk"),
        el("span", { class: "actions" },
          el("button", { class: "quiet", onclick: () => loadChanges(name) }, "Refresh"),
          el("button", { id: "commit-selected", onclick: (e) => commitSelected(e.target, name) }, "Commit selected"),
          el("button", { id: "reset-selected", class: "danger quiet", onclick: (e) => resetSelected(e.target, name) }, "Drop selected"),
          el("button", { id: "reset-vm", class: "danger quiet", onclick: (e) => resetVm(e.target, name) }, "Reset"))),
      el("div", { id: "vm-changes" }, "loading…")));
  refreshVmHeader();
  followServices(name);
  await loadVm(name);
  await loadChanges(name);
}

function refreshVmHeader() {
  const r = route();
  if (r.view !== "vm" || !state.vms || !state.vms.vms) return;
  const vm = state.vms.vms.find((v) => v.name === r.name);
  const status = document.getElementById("vm-status");
  const actions = document.getElementById("vm-actions");
  if (!status) return;
  if (!vm) { status.replaceChildren(badge("gone")); actions.replaceChildren(); return; }
  const shown = status.firstChild && status.firstChild.textContent;
  status.replaceChildren(badge(vm.status));
  actions.replaceChildren(...vmActions(vm));
  if (shown && shown !== vm.status) loadVm(r.name);
}

async function loadVm(name) {
  try {
    const answer = await api("GET", "/api/vms/" + encodeURIComponent(name));
    const vm = answer.vm;
    const facts = document.getElementById("vm-overview");
    if (!facts) return;
    const net = vm.network || {};
    const ports = (net.publish || []).map((p) => typeof p === "string" ? p : JSON.stringify(p)).join(", ");
    const rows = [
      ["Base", vm.config.base],
      ["Network", [net.mode, net.address, net.egress ? "egress" : "", net.confined === false ? "not confined" : ""].filter(Boolean).join(" ")],
      ["Published ports", ports],
      ["Limits", limits(vm.config.limits)],
      ["Tags", (vm.config.tags || []).join(", ")],
      ["Namespaces", (vm.namespaces || []).join(", ")],
      ["Init / keeper (host pids)", vm.state.init_pid ? vm.state.init_pid + " / " + vm.state.keeper_pid : ""],
      ["Started", vm.state.started ? age(vm.state.started) + " ago" : ""],
      ["Last exit", vm.state.last_exit],
      ["Layer", vm.path],
    ];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v === undefined || v === null || v === "" ? "—" : v)]));
    const processes = answer.processes;
    document.getElementById("vm-processes").replaceChildren(processes.length === 0
      ? el("p", { class: "quiet" }, "No processes (the VM is not running).")
      : el("table", { class: "processes" },
        el("thead", {}, el("tr", {}, ["PID", "Host PID", "UID", "Command"].map((h) => el("th", {}, h)))),
        el("tbody", {}, processes.map((p) => el("tr", {},
          el("td", { class: "num" }, p.pid), el("td", { class: "num" }, p.host_pid),
          el("td", { class: "num" }, p.uid), el("td", { class: "command" }, p.command))))));
  } catch (e) {
    notice(e.message, "error");
  }
}

async function loadChanges(name) {
  const holder = document.getElementById("vm-changes");
  try {
    const answer = await api("GET", "/api/vms/" + encodeURIComponent(name) + "/changes");
    if (!holder) return;
    const changes = answer.changes;
    if (changes.length === 0) {
      holder.replaceChildren(el("p", { class: "quiet" }, "The VM changed nothing."));
      return;
    }
    const total = changes.reduce((sum, c) => sum + (c.allocated || 0), 0);
    holder.replaceChildren(
      el("ul", { class: "tree" }, changes.map((c) => {
        const depth = c.path.split("/").length - 2;
        const letter = c.kind.charAt(0);  // Added, Modified, Deleted: as `feather diff` shows them
        // What the file would grant whoever runs it on the host (as `feather diff` shows it).
        // What the file would grant, and how the VM widened who may use the entry: both need
        // the consent `--keep-privileges` gives (as `feather diff` shows them).
        const privileges = (c.privileges || []).map(privilegeWord)
          .concat((c.access || []).filter(accessWidens).map(accessWord)).join(", ");
        const access = (c.access || []).map(accessWord).join(", ");
        // Where the VM cannot write by itself (as `feather diff` marks it): commit refuses it.
        const forbidden = c.forbidden ? "never committed: " + forbiddenWord(c.forbidden) : null;
        return el("li", { class: "change " + letter, style: { "--depth": Math.max(0, depth) } },
          el("label", {},
            // A change commit refuses can still be picked, to drop it (`feather reset VM PATH…`).
            el("input", { type: "checkbox", class: "pick", "data-path": c.path, "data-privileges": privileges || null, "data-forbidden": forbidden }),
            el("span", { class: "kind", title: c.kind.toLowerCase() }, letter),
            el("span", { class: "path" }, c.link_target && letter !== "D" ? c.path + " -> " + c.link_target : c.path),
            forbidden ? el("span", { class: "privileges", title: "where the VM cannot write: it got past a defence, or wrote here before this folder was guarded; never committed: look at all it changed" }, forbidden) : null,
            privileges ? el("span", { class: "privileges", title: "runs with privileges on the host, or lets others write it" }, privileges) : null,
            access ? el("span", { class: "quiet" }, access) : null,
            el("span", { class: "size" }, letter === "D" ? "" : bytes(c.size))));
      })),
      el("p", { class: "quiet" }, changes.length + " changes, " + bytes(total) + " on disk"));
  } catch (e) {
    if (holder) holder.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

function forbiddenWord(why) {
  return { "hidden": "in a folder hidden from VMs", "read-only": "under a --ro path", "special": "a socket or device node", "host-mount": "at, beneath or over a host mount the VM's layer does not cover", "unsearched": "removes a host folder too large to search for a state root" }[why] || why;
}

// As feather_vm::diff::Access::shown and ::widens.
function accessWord(a) {
  const octal = (mode) => mode.toString(8).padStart(4, "0");
  switch (a.change) {
    case "mode": return "mode " + octal(a.from) + "→" + octal(a.to);
    case "owner": return "owner " + a.from + "→" + a.to;
    case "group": return "group " + a.from + "→" + a.to;
    case "acl": return "ACL";
    case "world-writable": return "new, world-writable " + octal(a.mode);
    case "other-owner": return "new, owner " + a.owner + " in a folder of " + a.folder_owner + "'s";
    case "group-writable": return "new, group " + a.group + " may write " + octal(a.mode);
    case "new-acl": return "new, ACL";
    case "link-through-writable": return "link through " + a.folder + ", which others than root may write";
    default: return a.change;
  }
}

function accessWidens(a) {
  if (a.change === "owner" || a.change === "group") return a.to !== 0;
  if (a.change !== "mode") return true;
  const added = a.to & ~a.from;
  return (added & 0o6077) !== 0 || ((a.from & 0o1000) !== 0 && (a.to & 0o1000) === 0);
}

function privilegeWord(privilege) {
  return { "set-uid": "set-user-ID", "set-gid": "set-group-ID", "file-capabilities": "file capabilities" }[privilege] || privilege;
}

async function commitSelected(button, name) {
  const picked = [...document.querySelectorAll("#vm-changes input.pick:checked")];
  const paths = picked.map((box) => box.dataset.path);
  if (paths.length === 0) { notice("Choose the changes to commit first.", "error"); return; }
  const refused = picked.filter((box) => box.dataset.forbidden).map((box) => box.dataset.path);
  if (refused.length) {
    notice("Never committed: " + refused.join(", ") + ". Untick them, or drop them with Drop selected.", "error");
    return;
  }
  // Confirming a commit that lists them is the consent `--keep-privileges` gives on the command line.
  const privileged = picked.filter((box) => box.dataset.privileges)
    .map((box) => box.dataset.path + " (" + box.dataset.privileges + ")");
  const text = "Commit " + paths.length + " change(s) of " + name + " to its base? The base's files are replaced:"
    + pathLines(paths)
    + (privileged.length ? "\nThese will run with privileges on the host, or let other users write them:" + pathLines(privileged) : "");
  if (!(await confirmAction(text, "Commit"))) return;
  const body = { paths, keep_privileges: privileged.length > 0 };
  const done = await act(button, "Committed " + paths.length + " change(s)",
    () => api("POST", "/api/vms/" + encodeURIComponent(name) + "/commit", body));
  if (done) loadChanges(name);
}

async function resetSelected(button, name) {
  const paths = [...document.querySelectorAll("#vm-changes input.pick:checked")].map((box) => box.dataset.path);
  if (paths.length === 0) { notice("Choose the changes to drop first.", "error"); return; }
  const text = "Drop " + paths.length + " change(s) of " + name + "? This cannot be undone:" + pathLines(paths);
  if (!(await confirmAction(text, "Drop"))) return;
  const done = await act(button, "Dropped " + paths.length + " change(s)",
    () => api("POST", "/api/vms/" + encodeURIComponent(name) + "/reset", { paths }));
  if (done) loadChanges(name);
}

async function resetVm(button, name) {
  if (!(await confirmAction("Drop every change " + name + " made? This cannot be undone.", "Reset " + name))) return;
  const done = await act(button, "VM " + name + " reset", () => api("POST", "/api/vms/" + encodeURIComponent(name) + "/reset", { all: true }));
  if (done) loadChanges(name);
}

async function startJob(button, name, action, body) {
  const answer = await act(button, "", () => api("POST", "/api/vms/" + encodeURIComponent(name) + "/" + action, body));
  if (answer) {
    state.jobs[answer.job] = Object.assign(state.jobs[answer.job] || {}, { id: answer.job, vm: name, action });
    showJob(state.jobs[answer.job]);
  }
}

async function checkpointVm(button, name, leaveRunning) {
  if (!leaveRunning && !(await confirmAction("Checkpoint " + name + "? Its processes are saved and end; Restore brings them back.", "Checkpoint"))) return;
  await startJob(button, name, "checkpoint", { leave_running: leaveRunning });
}

function migrateForm(name) {
  const holder = document.getElementById("migrate-form");
  if (holder.firstChild) { holder.replaceChildren(); return; }
  const form = el("form", { class: "grid", id: "migrate", onsubmit: async (e) => {
    e.preventDefault();
    const to = form.elements.to.value.trim();
    if (!(await confirmAction("Move " + name + " to " + to + "? It stops here once it runs there.", "Migrate"))) return;
    await startJob(form.querySelector("button[type=submit]"), name, "migrate", { to, token: form.elements.token.value });
    holder.replaceChildren();
  } },
    el("label", {}, "Receiver (its feather serve)", el("input", { name: "to", placeholder: "10.0.0.2:7071", required: true })),
    el("label", {}, "Shared token", el("input", { name: "token", type: "password", required: true, autocomplete: "off" })),
    el("div", { class: "buttons" }, el("button", { type: "submit" }, "Migrate")));
  holder.replaceChildren(form);
}

/// A job's latest word, on its VM's page.
function showJob(job) {
  const line = document.getElementById("vm-job");
  const r = route();
  if (!line || r.view !== "vm" || r.name !== job.vm) return;
  let text = job.action + ": ";
  if (job.finished) {
    text += job.error ? "failed: " + job.error : "done";
    if (!job.error && job.result && job.result.frozen_ms !== undefined) text += " (frozen " + job.result.frozen_ms + " ms, " + bytes(job.result.bytes) + ")";
  } else {
    text += job.phase || "working";
    if (job.done !== undefined) text += " — " + bytes(job.done) + (job.total ? " of " + bytes(job.total) : "");
  }
  line.textContent = text;
  line.className = "job " + (job.finished ? (job.error ? "error" : "ok") : "quiet");
  if (job.finished) loadVm(job.vm);
  if (job.finished && job.result && job.result.matrix) renderMatrix(job.result.matrix);
}

/// `feather check ipc`'s matrix: a row per channel, a column per direction, each cell
/// coloured by whether it holds (and red where it leaks).
function renderMatrix(matrix) {
  const holder = document.getElementById("ipc-matrix");
  if (!holder) return;
  const directions = [];
  for (const row of matrix.rows) for (const cell of row.cells) if (!directions.includes(cell.direction)) directions.push(cell.direction);
  let group = null;
  const rows = [];
  for (const row of matrix.rows) {
    if (row.group !== group) {
      group = row.group;
      rows.push(el("tr", { class: "group" }, el("th", { colspan: directions.length + 1 }, group)));
    }
    rows.push(el("tr", {}, el("td", { class: "channel" }, row.channel),
      directions.map((direction) => {
        const cell = row.cells.find((c) => c.direction === direction);
        if (!cell) return el("td", { class: "cell none" }, "");
        const state = cell.leak ? "leak" : !cell.holds ? "broken" : cell.outcome.kind;
        return el("td", { class: "cell " + state, title: cell.outcome.detail + (cell.rule ? " (rule " + cell.rule + ")" : "") },
          cell.leak ? "LEAK" : !cell.holds ? "BROKEN" : cell.outcome.kind.replace("_", " "));
      })));
  }
  holder.replaceChildren(
    el("p", { class: matrix.failures ? "error" : "ok-text" },
      matrix.failures ? matrix.failures + " cell(s) do not hold" : "every cell holds: nothing leaks, nothing is broken"),
    el("div", { class: "matrix-wrap" }, el("table", { class: "matrix" },
      el("thead", {}, el("tr", {}, el("th", {}, "channel"), directions.map((d) => el("th", {}, d)))),
      el("tbody", {}, rows))),
    el("ul", { class: "quiet small" }, matrix.notes.map((note) => el("li", {}, note))));
}

// ---- a VM's services ------------------------------------------------------------------------

let serviceFeed = null;   // the open VM page's services feed
let logFeed = null;       // the log being followed

function closeFeeds() {
  if (serviceFeed) { serviceFeed.close(); serviceFeed = null; }
  closeLog();
  closeTerminal();
}

// ---- a terminal into a VM -------------------------------------------------------------------

let terminal = null;  // { term, socket } while a shell is open

/// A shell in the VM on a terminal of its own (as `feather exec -it`), over a WebSocket:
/// keys and output as bytes, the window's size as a small JSON text.
function openTerminal(name) {
  closeTerminal();
  const holder = document.getElementById("terminal");
  holder.replaceChildren();
  const term = new Terminal({ cursorBlink: true, fontSize: 13, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(holder);
  fit.fit();
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  // A WebSocket sends no header of ours: the session's key goes as a subprotocol.
  const socket = new WebSocket(scheme + location.host + "/api/vms/" + encodeURIComponent(name) + "/terminal",
    ["feather-terminal", "feather-session." + state.key]);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  socket.addEventListener("open", () => {
    socket.send(JSON.stringify({ cols: term.cols, rows: term.rows }));
    term.focus();
  });
  socket.addEventListener("message", (event) => {
    if (event.data instanceof ArrayBuffer) term.write(new Uint8Array(event.data));
  });
  socket.addEventListener("close", (event) => {
    term.write("\r\n[" + (event.reason || "the connection closed") + "]\r\n");
    holder.dataset.closed = event.reason || "closed";
  });
  term.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
  term.onResize(({ cols, rows }) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ cols, rows }));
  });
  const refit = () => fit.fit();
  window.addEventListener("resize", refit);
  terminal = { term, socket, refit };
}

function closeTerminal() {
  if (!terminal) return;
  terminal.socket.close();
  terminal.term.dispose();
  window.removeEventListener("resize", terminal.refit);
  terminal = null;
}

function followServices(name) {
  closeFeeds();
  serviceFeed = eventFeed("/api/vms/" + encodeURIComponent(name) + "/services/events");
  serviceFeed.addEventListener("services", (event) => renderServices(name, JSON.parse(event.data)));
}

function renderServices(name, answer) {
  const holder = document.getElementById("vm-services");
  if (!holder) return;
  if (answer.error) { holder.replaceChildren(el("p", { class: "quiet" }, answer.error)); return; }
  if (answer.services.length === 0) {
    holder.replaceChildren(el("p", { class: "quiet" }, "No services: start one of the host's units above."));
    return;
  }
  holder.replaceChildren(el("table", { class: "services" },
    el("thead", {}, el("tr", {}, ["Unit", "State", "Main PID", "Ready", "Restarts", "Memory", "CPU", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, answer.services.map((unit) => el("tr", { "data-unit": unit.name },
      el("td", {}, unit.name, unit.description ? el("div", { class: "quiet small" }, unit.description) : ""),
      el("td", {}, badge(unit.state), " ", el("span", { class: "quiet" }, unit.sub),
        unit.result ? el("div", { class: "error small" }, unit.result) : ""),
      el("td", { class: "num" }, unit.main_pid || "—"),
      el("td", {}, unit.ready ? "yes" : "no"),
      el("td", { class: "num" }, unit.restarts),
      el("td", { class: "num" }, bytes(unit.memory_bytes)),
      el("td", { class: "num" }, unit.cpu_nsec === null || unit.cpu_nsec === undefined ? "—" : (unit.cpu_nsec / 1e9).toFixed(2) + "s"),
      el("td", { class: "actions" },
        el("button", { class: "quiet", "data-action": "logs", onclick: () => followLog(name, unit.name) }, "Log"),
        el("button", { class: "quiet", "data-action": "restart", onclick: (e) => serviceAction(e.target, name, "restart", unit.name) }, "Restart"),
        el("button", { class: "danger quiet", "data-action": "stop", onclick: (e) => serviceAction(e.target, name, "stop", unit.name) }, "Stop")))))));
}

async function serviceAction(button, name, action, unit) {
  await act(button, unit + ": " + action + " done",
    () => api("POST", "/api/vms/" + encodeURIComponent(name) + "/services", { action, units: [unit] }));
}

async function startService(form, name) {
  const unit = form.elements.unit.value.trim();
  const done = await act(form.querySelector("button"), unit + " started",
    () => api("POST", "/api/vms/" + encodeURIComponent(name) + "/services", { action: "start", units: [unit] }));
  if (done) form.reset();
}

function followLog(name, unit) {
  closeLog();
  const box = document.getElementById("service-log-box");
  const log = document.getElementById("service-log");
  document.getElementById("service-log-title").textContent = "Log of " + unit;
  log.replaceChildren();
  box.hidden = false;
  logFeed = eventFeed("/api/vms/" + encodeURIComponent(name) + "/services/" + encodeURIComponent(unit) + "/logs");
  logFeed.addEventListener("line", (event) => {
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(document.createTextNode(event.data + "\n"));
    // A long-followed log keeps its last 2000 lines.
    while (log.childNodes.length > 2000) log.removeChild(log.firstChild);
    if (atEnd) log.scrollTop = log.scrollHeight;
  });
  logFeed.addEventListener("failed", (event) => {
    log.append(el("span", { class: "error" }, event.data + "\n"));
    closeLogFeed();
  });
}

function closeLogFeed() {
  if (logFeed) { logFeed.close(); logFeed = null; }
}

function closeLog() {
  closeLogFeed();
  const box = document.getElementById("service-log-box");
  if (box) box.hidden = true;
}

// ---- Shuttle --------------------------------------------------------------------------------

async function renderShuttle() {
  const main = document.getElementById("main");
  main.replaceChildren(
    el("section", { class: "bar" }, el("h1", {}, "Shuttle")),
    el("section", { class: "card", id: "asks-card" }, el("h2", {}, "Questions waiting"), el("div", { id: "asks" })),
    el("section", { class: "card" }, el("h2", {}, "Rules in force, in order"), el("div", { id: "rules" }, "loading…")),
    el("section", { class: "card" }, el("h2", {}, "Which rule decides?"), checkForm(), el("div", { id: "check-result" })),
    el("section", { class: "card" },
      el("div", { class: "bar" }, el("h2", {}, "Audit log"),
        el("span", { class: "filters" },
          el("input", { id: "audit-vm", placeholder: "VM", oninput: renderAudit }),
          el("label", {}, el("input", { type: "checkbox", id: "audit-denied", onchange: renderAudit }), " denied only"))),
      el("div", { id: "audit" }, "loading…")));
  try {
    const policy = await api("GET", "/api/policy");
    document.getElementById("rules").replaceChildren(policy.rules.length === 0
      ? el("p", { class: "quiet" }, "No rules: nothing crosses between VMs. Policy files are read from " + policy.dirs.join(" and ") + ".")
      : el("table", {}, el("thead", {}, el("tr", {}, ["Rule", "Kind", "Object", "Source", "Target", "Verdict", "Options"].map((h) => el("th", {}, h)))),
        el("tbody", {}, policy.rules.map((r) => el("tr", {},
          el("td", { class: "at" }, r.at), el("td", {}, r.kind), el("td", {}, r.object), el("td", {}, r.source),
          el("td", {}, r.target), el("td", {}, badge(r.verdict)),
          el("td", {}, Object.entries(r.options).map(([k, v]) => k + "=" + v).join(" ")))))));
  } catch (e) {
    document.getElementById("rules").replaceChildren(el("p", { class: "error" }, e.message));
  }
  renderAsks();
  try {
    state.audit = (await api("GET", "/api/audit?lines=500")).entries;
  } catch (e) {
    notice(e.message, "error");
  }
  renderAudit();
}

/// The questions of `ask` rules: a badge in the header on every page, and on the Shuttle
/// page each with Allow and Deny (the first answer counts, here or on the VM's terminal).
function renderAsks() {
  const badgeNode = document.getElementById("asks-badge");
  badgeNode.hidden = state.asks.length === 0;
  badgeNode.textContent = state.asks.length + (state.asks.length === 1 ? " question" : " questions");
  const holder = document.getElementById("asks");
  if (!holder) return;
  if (state.asks.length === 0) {
    holder.replaceChildren(el("p", { class: "quiet" }, "None. An ask rule's question appears here while this page is open, as well as on the terminal that started the VM."));
    return;
  }
  holder.replaceChildren(el("ul", { class: "asks" }, state.asks.map((q) => el("li", { "data-ask": q.id },
    el("p", {}, el("strong", {}, q.source), " asks for ", q.kind, " ", el("span", { class: "object" }, q.object),
      " of ", el("strong", {}, q.target), el("span", { class: "quiet" }, " (rule " + q.rule + ", until " +
        new Date(q.until * 1000).toLocaleTimeString() + ")")),
    el("span", { class: "actions" },
      el("button", { "data-answer": "allow", onclick: (e) => answerAsk(e.target, q.id, true) }, "Allow"),
      el("button", { class: "danger", "data-answer": "deny", onclick: (e) => answerAsk(e.target, q.id, false) }, "Deny"))))));
}

async function answerAsk(button, id, allow) {
  await act(button, allow ? "Allowed" : "Denied", () => api("POST", "/api/asks/" + encodeURIComponent(id), { allow }));
}

function checkForm() {
  const form = el("form", { class: "grid", id: "check-form", onsubmit: (e) => { e.preventDefault(); runCheck(form); } },
    el("label", {}, "Kind", el("select", { name: "kind" }, ["ipc", "invoke", "files"].map((k) => el("option", { value: k }, k)))),
    el("label", {}, "Object", el("input", { name: "object", placeholder: "unix:/run/postgresql/.s.PGSQL.5432" })),
    el("label", {}, "From", el("input", { name: "source", placeholder: "a VM, or @host", required: true })),
    el("label", {}, "To", el("input", { name: "target", placeholder: "a VM, or @host", required: true })),
    el("div", { class: "buttons" }, el("button", { type: "submit" }, "Check")));
  return form;
}

async function runCheck(form) {
  const query = new URLSearchParams();
  for (const name of ["kind", "object", "source", "target"]) query.set(name, form.elements[name].value.trim());
  const result = document.getElementById("check-result");
  try {
    const answer = await api("GET", "/api/policy/check?" + query);
    result.replaceChildren(
      el("p", { class: "verdict" }, badge(answer.verdict), " ",
        answer.rule ? "by rule " + answer.rule.at : "no rule matches: denied by default"),
      answer.consulted.length === 0 ? "" : el("ol", { class: "consulted" }, answer.consulted.map((step) =>
        el("li", {}, el("span", { class: "at" }, step.rule.at), " ", step.mismatch ? "does not apply: " + step.mismatch : "applies"))));
  } catch (e) {
    result.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

function renderAudit() {
  const holder = document.getElementById("audit");
  if (!holder) return;
  const vm = (document.getElementById("audit-vm").value || "").trim();
  const deniedOnly = document.getElementById("audit-denied").checked;
  const kept = state.audit.filter((e) => (!vm || e.source === vm || e.target === vm) && (!deniedOnly || isRefusal(e)));
  if (kept.length === 0) { holder.replaceChildren(el("p", { class: "quiet" }, "No decisions recorded.")); return; }
  holder.replaceChildren(el("table", { class: "audit" },
    el("thead", {}, el("tr", {}, ["Time", "Kind", "From", "To", "Object", "Rule", "Outcome", "Detail"].map((h) => el("th", {}, h)))),
    el("tbody", {}, kept.slice(-300).reverse().map((e) => el("tr", { class: e.outcome },
      el("td", {}, e.time.replace("T", " ").replace("Z", "")), el("td", {}, e.kind), el("td", {}, e.source), el("td", {}, e.target),
      el("td", { class: "object" }, e.object), el("td", { class: "at" }, e.rule || "default"),
      el("td", {}, badge(e.outcome)), el("td", {}, e.detail || ""))))));
}

// ---- start ----------------------------------------------------------------------------------

/// The page registers no service worker. One found here was left by a server that held this
/// address while `feather web` did not, to answer for the page: it is unregistered, and the page
/// stops (the login's Clear-Site-Data drops it too; this covers a browser that ignored that).
async function dropServiceWorkers() {
  if (!("serviceWorker" in navigator)) return false;
  const found = await navigator.serviceWorker.getRegistrations();
  for (const registration of found) await registration.unregister();
  return found.length > 0;
}

async function boot() {
  if (await dropServiceWorkers()) {
    localStorage.removeItem(KEY_ITEM);
    document.getElementById("main").replaceChildren(el("p", { class: "error" },
      "A service worker that feather does not register was found for this address and removed: " +
      "another server held this address before. Restart `feather web` and open its new login link."));
    return;
  }
  keepSessionKey();
  try {
    const session = await api("GET", "/api/session");
    state.csrf = session.csrf;
    document.getElementById("root-line").textContent = "state root " + session.root + " · feather " + session.version;
  } catch (e) {
    document.getElementById("main").replaceChildren(el("p", { class: "error" }, e.message));
    return;
  }
  window.addEventListener("hashchange", render);
  render();
  connect();
  // Ages in the table move on without news from the server.
  setInterval(() => { if (route().view === "vms") renderVmTable(); }, 10000);
}

document.addEventListener("DOMContentLoaded", boot);
