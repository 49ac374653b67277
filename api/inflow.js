// The original Raindrop's "inflow" API, rewritten as Raindrop API routes: what a mail client
// needs to show the groups, their conversations and a conversation's messages, and the few
// things it writes (a message read, a mailing list to leave). Every answer is JSON.
//
// Conversations are named in URLs by their key's value as JSON, URI-encoded: the conversation
// ["conv", ["email", "<message-id>"]] is /api/inflow/conversations/%5B%22email%22%2C…%5D.
// Documents are read with the same host functions extensions use; writes go through the
// store, where the extensions take them up like any other change.

const PAGE = 20;
const MAX_PAGE = 200;

function bad(message) {
  return { status: 400, json: { error: message } };
}

function notFound(message) {
  return { status: 404, json: { error: message } };
}

// A whole number from the query, within [min, max].
function intParam(value, fallback, min, max) {
  if (value === undefined || value === "") return fallback;
  const n = Number(value);
  if (!Number.isInteger(n)) return null;
  return Math.min(Math.max(n, min), max);
}

// The JSON of a conversation key's value, from a URL parameter.
function parseKeyValue(text) {
  try {
    const v = JSON.parse(text);
    return Array.isArray(v) && v.length === 2 && typeof v[0] === "string" ? v : null;
  } catch (_) {
    return null;
  }
}

// A group's title: its rd.grouping.info's, else one made from the tag.
function groupTitle(tag, info) {
  if (info && typeof info.title === "string" && info.title) return info.title;
  if (tag.startsWith("mailing-list-")) return tag.slice("mailing-list-".length);
  if (tag.startsWith("identity-")) return "Personal (" + tag.replace(/^identity-[a-z]+-/, "") + ")";
  if (tag.startsWith("folder-")) return tag.slice("folder-".length);
  const names = { "bugzilla-message": "Bugzilla", "facebook-message": "Facebook", "twitter-message": "Twitter", archived: "Archived" };
  return names[tag] || tag;
}

// What the list of a group shows of a conversation.
function conversationItem(summary, tag) {
  const messages = Array.isArray(summary.messages) ? summary.messages : [];
  const latest = messages.length ? messages[messages.length - 1] : null;
  const body = latest && latest.schemas && latest.schemas["rd.msg.body"] ? latest.schemas["rd.msg.body"] : {};
  const stamp = (summary["grouping-timestamp"] || []).find((g) => g[0] === tag);
  return {
    id: summary.rd_key[1],
    subject: summary.subject || "(no subject)",
    from: summary.from_display || [],
    messages: messages.length,
    unread: Array.isArray(summary.unread_ids) ? summary.unread_ids.length : 0,
    timestamp: stamp ? stamp[1] : body.timestamp || 0,
    preview: body.body_preview || "",
  };
}

// GET /inflow/groups: every group with a summary, the ones with unread conversations first.
route({
  method: "GET",
  path: "/inflow/groups",
  handler() {
    const infos = {};
    for (const info of find_schemas("rd.grouping.info", undefined, undefined, 100000)) {
      for (const tag of info.grouping_tags || []) infos[tag] = info;
    }
    const groups = find_schemas("rd.grouping.summary", undefined, undefined, 100000).map((s) => ({
      tag: s.rd_key[1],
      title: groupTitle(s.rd_key[1], infos[s.rd_key[1]]),
      num_unread: s.num_unread || 0,
      unread: s.unread || [],
    }));
    groups.sort((a, b) => (b.num_unread > 0) - (a.num_unread > 0) || a.title.localeCompare(b.title));
    return { json: { groups } };
  },
});

// Each group's conversations in order (latest first), kept by each worker between requests
// and brought up to date from the changes feed: a page of a group is then a slice and the
// page's summaries, not a read of every conversation of the group.
const ordered = { seq: null, groups: new Map() };
const SUMMARY_ID = "!rd.conv.summary";

function entryOf(summary, tag) {
  const stamp = (summary["grouping-timestamp"] || []).find((g) => g[0] === tag);
  return { key: summary.rd_key, ts: stamp ? stamp[1] : 0, order: JSON.stringify(summary.rd_key) };
}

// Latest first; the key breaks ties.
function before(a, b) {
  return b.ts - a.ts || (a.order < b.order ? -1 : a.order > b.order ? 1 : 0);
}

// Where `entry` goes in `list` (the first place not before it).
function place(list, entry) {
  let lo = 0, hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (before(list[mid], entry) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function buildGroup(tag, field) {
  const list = find_schemas("rd.conv.summary", field, tag, 1000000, ["grouping-timestamp"]).map((s) => entryOf(s, tag));
  list.sort(before);
  // pages: "skip,limit" → the answer's text, until a conversation of the group changes.
  return { tag, field, list, byOrder: new Map(list.map((e) => [e.order, e])), pages: new Map() };
}

// A conversation summary changed: out of every kept group, and back where it now belongs.
function moved(summary) {
  const order = JSON.stringify(summary.rd_key);
  for (const g of ordered.groups.values()) {
    const old = g.byOrder.get(order);
    if (old) {
      g.list.splice(place(g.list, old), 1);
      g.byOrder.delete(order);
      g.pages.clear();
    }
    const tags = g.field === "unread_grouping_tags[]" ? summary.unread_grouping_tags : summary.all_grouping_tags;
    if ((tags || []).includes(g.tag)) {
      const e = entryOf(summary, g.tag);
      g.list.splice(place(g.list, e), 0, e);
      g.byOrder.set(order, e);
      g.pages.clear();
    }
  }
}

function catchUp() {
  if (ordered.seq === null) {
    ordered.seq = changes_since(null).last_seq;
    return;
  }
  for (;;) {
    const page = changes_since(ordered.seq, 5000);
    ordered.seq = page.last_seq;
    const changed = page.changes.filter((c) => c.id.endsWith(SUMMARY_ID));
    if (changed.length && ordered.groups.size) {
      // A summary gone (a conversation merged into another), or too many to place one by
      // one: the kept groups are built again when next asked for.
      if (changed.length > 2000 || changed.some((c) => c.deleted)) ordered.groups.clear();
      else {
        const docs = open_documents(changed.map((c) => c.id), ["all_grouping_tags", "unread_grouping_tags", "grouping-timestamp"]);
        for (const d of docs) if (d) moved(d);
      }
    }
    if (page.changes.length < 5000) return;
  }
}

// GET /inflow/conversations?group=TAG[&limit=20&skip=0&unread=1]: a group's conversations,
// latest first, a page at a time.
route({
  method: "GET",
  path: "/inflow/conversations",
  handler(req) {
    const tag = req.query.group;
    if (!tag) return bad("group is required: /api/inflow/conversations?group=TAG (see /api/inflow/groups)");
    const limit = intParam(req.query.limit, PAGE, 1, MAX_PAGE);
    const skip = intParam(req.query.skip, 0, 0, 1e9);
    if (limit === null || skip === null) return bad("limit and skip must be whole numbers");
    const field = req.query.unread === "1" ? "unread_grouping_tags[]" : "all_grouping_tags[]";
    catchUp();
    const name = field + " " + tag;
    let group = ordered.groups.get(name);
    if (!group) {
      if (ordered.groups.size >= 200) ordered.groups.clear();
      group = buildGroup(tag, field);
      ordered.groups.set(name, group);
    }
    const pageKey = skip + "," + limit;
    let text = group.pages.get(pageKey);
    if (text === undefined) {
      const page = group.list.slice(skip, skip + limit);
      const summaries = open_schemas(page.map((e) => [e.key, "rd.conv.summary"]));
      const conversations = summaries.filter((s) => s).map((s) => conversationItem(s, tag));
      text = JSON.stringify({ group: tag, total: group.list.length, skip, limit, conversations });
      if (group.pages.size >= 100) group.pages.clear();
      group.pages.set(pageKey, text);
    }
    return { json_text: text };
  },
});

// GET /inflow/conversations/:id: one conversation with its messages, each with its body,
// quoted parts, attachments and links, and whether it was read.
route({
  method: "GET",
  path: "/inflow/conversations/:id",
  handler(req) {
    const value = parseKeyValue(req.params.id);
    if (!value) return bad("the conversation id is its key's value as JSON, e.g. [\"email\",\"<message-id>\"]");
    const summary = open_schemas([[["conv", value], "rd.conv.summary"]])[0];
    if (!summary) return notFound("no conversation " + req.params.id);
    const keys = (summary.messages || []).map((m) => m.id);
    const wanted = [];
    for (const k of keys) {
      wanted.push([k, "rd.msg.body"], [k, "rd.msg.body.quoted"], [k, "rd.msg.attachment-summary"], [k, "rd.msg.seen"]);
    }
    const docs = open_schemas(wanted);
    const messages = keys.map((key, i) => {
      const [body, quoted, attachments, seen] = docs.slice(i * 4, i * 4 + 4);
      const b = body || {};
      return {
        id: key,
        subject: b.subject || "",
        from: b.from || null,
        from_display: b.from_display || "",
        to_display: b.to_display || [],
        timestamp: b.timestamp || 0,
        body: b.body || "",
        quoted: quoted && Array.isArray(quoted.parts) ? quoted.parts : [],
        attachments: attachments && Array.isArray(attachments.attachments) ? attachments.attachments.map((a) => a.id) : [],
        seen: !!(seen && seen.seen),
      };
    });
    // Links and files, read in one go.
    const attachmentIds = [];
    for (const m of messages) for (const id of m.attachments) attachmentIds.push(id);
    const found = open_schemas(attachmentIds.flatMap((id) => [[id, "rd.attach.link"], [id, "rd.attach.file"]]));
    let n = 0;
    for (const m of messages) {
      const links = [], files = [];
      for (const _ of m.attachments) {
        const link = found[n++], file = found[n++];
        if (link) links.push({ url: link.url || null, domain: link.domain || "", path: link.path || "" });
        if (file) files.push({ name: file.name || "", content_type: file.content_type || "", length: file.length || 0 });
      }
      m.links = links;
      m.files = files;
      delete m.attachments;
    }
    return { json: { id: value, subject: summary.subject || "(no subject)", messages } };
  },
});

// POST /inflow/messages/seen {"messages": [key, …], "seen": true}: marks messages read (or
// unread), as the user's say, over what the mail server said.
route({
  method: "POST",
  path: "/inflow/messages/seen",
  handler(req) {
    const body = req.json;
    if (!body || !Array.isArray(body.messages) || body.messages.length === 0 || body.messages.length > 1000)
      return bad('the body is {"messages": [["email", "<message-id>"], …], "seen": true|false}');
    if (!body.messages.every((k) => Array.isArray(k) && k.length === 2 && typeof k[0] === "string"))
      return bad("each message is a key like [\"email\", \"<message-id>\"]");
    const seen = body.seen !== false;
    const results = add_schemas(body.messages.map((k) => ({ rd_key: k, rd_schema_id: "rd.msg.seen", seen, rd_ext_id: "rd.api.inflow" })));
    const failed = results.filter((r) => r.error);
    if (failed.length) return { status: 500, json: { error: "some were not written", results } };
    return { json: { seen, written: results.length } };
  },
});

// GET /inflow/contacts: every contact with the identities linked to it.
route({
  method: "GET",
  path: "/inflow/contacts",
  handler() {
    const byContact = {};
    for (const link of find_schemas("rd.identity.contacts", undefined, undefined, 1000000)) {
      for (const c of link.contacts || []) (byContact[c[0]] = byContact[c[0]] || []).push({ identity: link.rd_key[1], relationship: c[1] });
    }
    const contacts = find_schemas("rd.contact", undefined, undefined, 1000000).map((c) => ({
      id: c.rd_key[1],
      name: c.displayName || "",
      identities: byContact[c.rd_key[1]] || [],
    }));
    contacts.sort((a, b) => a.name.localeCompare(b.name));
    return { json: { contacts } };
  },
});

// GET /inflow/identities: the identities seen in the mail, and which are the user's own.
route({
  method: "GET",
  path: "/inflow/identities",
  handler() {
    const mine = get_my_identities().map((i) => JSON.stringify(i));
    const identities = find_schemas("rd.identity.exists", undefined, undefined, 100000, []).map((d) => ({
      id: d.rd_key[1],
      mine: mine.includes(JSON.stringify(d.rd_key[1])),
    }));
    return { json: { identities, mine: get_my_identities() } };
  },
});

// GET /inflow/mailing-lists: the lists the mail came through, with their state.
route({
  method: "GET",
  path: "/inflow/mailing-lists",
  handler() {
    const lists = find_schemas("rd.mailing-list", undefined, undefined, 100000).map((l) => ({
      id: l.id || l.rd_key[1],
      name: l.name || l.id || "",
      status: l.status || "subscribed",
      identity: l.identity || null,
      unsubscribe: l.unsubscribe || null,
      archive: l.archive || null,
      changed_timestamp: l.changed_timestamp || 0,
    }));
    lists.sort((a, b) => a.name.localeCompare(b.name));
    return { json: { lists } };
  },
});

// POST /inflow/mailing-lists/:id/unsubscribe: asks to leave a list, as the original's front
// end did: the list's status becomes unsubscribe-pending, and the mailing-list extension
// answers the list's confirmation request when it comes.
route({
  method: "POST",
  path: "/inflow/mailing-lists/:id/unsubscribe",
  handler(req) {
    const list = open_schemas([[["mailing-list", req.params.id], "rd.mailing-list"]])[0];
    if (!list) return notFound("no mailing list " + req.params.id);
    if (list.status !== "subscribed") return { status: 409, json: { error: "the list is " + list.status + ", not subscribed", status: list.status } };
    list.status = "unsubscribe-pending";
    list.changed_timestamp = Math.floor(Date.now() / 1000);
    const [result] = update_documents([list]);
    if (result.error) return { status: result.error === "conflict" ? 409 : 500, json: { error: "not written: " + result.error } };
    return { status: 202, json: { id: req.params.id, status: list.status } };
  },
});

// GET /inflow/search?q=TEXT[&limit=50]: conversations whose subject or sender holds TEXT
// (any case), latest first.
route({
  method: "GET",
  path: "/inflow/search",
  handler(req) {
    const q = (req.query.q || "").trim().toLowerCase();
    if (!q) return bad("q is required: /api/inflow/search?q=TEXT");
    const limit = intParam(req.query.limit, 50, 1, MAX_PAGE);
    if (limit === null) return bad("limit must be a whole number");
    const hits = [];
    for (const s of find_schemas("rd.conv.summary", undefined, undefined, 1000000, ["subject", "from_display", "grouping-timestamp"])) {
      const text = ((s.subject || "") + "\n" + (s.from_display || []).join("\n")).toLowerCase();
      if (!text.includes(q)) continue;
      const latest = Math.max(0, ...(s["grouping-timestamp"] || []).map((g) => g[1]));
      hits.push({ id: s.rd_key[1], subject: s.subject || "(no subject)", from: s.from_display || [], timestamp: latest });
    }
    hits.sort((a, b) => b.timestamp - a.timestamp);
    return { json: { q, total: hits.length, conversations: hits.slice(0, limit) } };
  },
});
