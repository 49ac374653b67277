// Raindrop's mail page: groups, a group's conversations, a conversation's messages — read
// from the inflow API (/api/inflow/…) and nothing else. Where it is lives in the URL's hash
// (#group=TAG&conv=ID), so a view can be linked to and reloaded. A token given once as
// #token=… is kept in this browser and sent with every API call.
"use strict";

const state = { group: null, conv: null, skip: 0, q: "" };

function token() {
  return localStorage.getItem("raindrop-token");
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = "Bearer " + token();
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch("/api" + path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
  return body;
}

// An element with text (never HTML from the mail) and children.
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function showError(e) {
  const box = document.getElementById("error");
  box.textContent = String(e.message || e);
  box.hidden = false;
  setTimeout(() => { box.hidden = true; }, 6000);
}

function hashFor(group, conv) {
  const parts = [];
  if (group) parts.push("group=" + encodeURIComponent(group));
  if (conv) parts.push("conv=" + encodeURIComponent(JSON.stringify(conv)));
  return "#" + parts.join("&");
}

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    localStorage.setItem("raindrop-token", params.get("token"));
    params.delete("token");
    history.replaceState(null, "", "#" + params.toString());
  }
  state.group = params.get("group");
  try {
    state.conv = params.get("conv") ? JSON.parse(params.get("conv")) : null;
  } catch (_) {
    state.conv = null;
  }
}

async function renderGroups() {
  const nav = document.getElementById("groups");
  const { groups } = await api("/inflow/groups");
  if (!state.group && groups.length) state.group = groups[0].tag;
  nav.replaceChildren(
    ...groups.map((g) =>
      el("a", { href: hashFor(g.tag, null), class: g.tag === state.group ? "current" : "", "data-tag": g.tag },
        el("span", { text: g.title }),
        g.num_unread ? el("span", { class: "count", text: String(g.num_unread) }) : null)),
  );
  if (!groups.length) nav.replaceChildren(el("p", { class: "quiet", text: "No mail yet." }));
}

async function renderList() {
  const list = document.getElementById("list");
  if (state.q) {
    const found = await api("/inflow/search?q=" + encodeURIComponent(state.q));
    list.replaceChildren(el("h2", { text: found.total + " found for “" + state.q + "”" }),
      ...found.conversations.map((c) => conversationLink(c, state.group)));
    return;
  }
  if (!state.group) return list.replaceChildren();
  const page = await api("/inflow/conversations?group=" + encodeURIComponent(state.group) + "&limit=20&skip=" + state.skip);
  const items = page.conversations.map((c) => conversationLink(c, state.group));
  const more = page.skip + page.conversations.length < page.total
    ? el("button", { class: "more", text: "More", onclick: () => { state.skip += 20; renderList().catch(showError); } })
    : null;
  const header = el("h2", { text: page.total + " conversation" + (page.total === 1 ? "" : "s") });
  if (state.skip === 0) list.replaceChildren(header, ...items, more);
  else {
    list.querySelector(".more")?.remove();
    list.append(...items);
    if (more) list.append(more);
  }
}

function conversationLink(c, group) {
  const current = state.conv && JSON.stringify(state.conv) === JSON.stringify(c.id);
  return el("a", { href: hashFor(group, c.id), class: "conv" + (c.unread ? " unread" : "") + (current ? " current" : "") },
    el("div", { class: "subject", text: c.subject }),
    el("div", { class: "meta", text: (c.from || []).join(", ") + " · " + when(c.timestamp) + (c.messages > 1 ? " · " + c.messages + " messages" : "") }),
    c.preview ? el("div", { class: "preview", text: c.preview }) : null);
}

async function renderConversation() {
  const pane = document.getElementById("conversation");
  if (!state.conv) return pane.replaceChildren(el("p", { class: "quiet", text: "Choose a conversation." }));
  const conv = await api("/inflow/conversations/" + encodeURIComponent(JSON.stringify(state.conv)));
  pane.replaceChildren(el("h2", { text: conv.subject }), ...conv.messages.map(message));
}

function message(m) {
  const mark = el("button", {
    text: m.seen ? "Mark unread" : "Mark read",
    class: "mark",
    onclick: () => markSeen(m.id, !m.seen).catch(showError),
  });
  const links = m.links.length
    ? el("ul", { class: "links" }, ...m.links.map((l) => el("li", {}, el("a", { href: l.url, rel: "noreferrer", target: "_blank", text: l.url }))))
    : null;
  const files = m.files.length ? el("p", { class: "meta", text: "Attached: " + m.files.map((f) => f.name).join(", ") }) : null;
  return el("section", { class: "msg" + (m.seen ? "" : " unread"), "data-seen": String(m.seen) },
    el("div", { class: "meta", text: (m.from_display || (m.from ? m.from[1] : "")) + " → " + m.to_display.join(", ") + " · " + when(m.timestamp) }),
    el("pre", { text: m.body }), files, links, mark);
}

async function markSeen(key, seen) {
  await api("/inflow/messages/seen", { method: "POST", json: { messages: [key], seen } });
  await renderConversation();
  // The conversation's summary follows once the extensions have taken the change up.
  setTimeout(() => refresh(false).catch(showError), 700);
}

async function refresh(all = true) {
  readHash();
  await renderGroups();
  if (all) state.skip = 0;
  await Promise.all([renderList(), renderConversation()]);
}

window.addEventListener("hashchange", () => { state.q = ""; refresh().catch(showError); });
document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  state.q = document.getElementById("q").value.trim();
  renderList().catch(showError);
});
refresh().catch(showError);
