// Messages → rd.conv.summary of their conversation: subject, the latest three messages, who
// took part, what is unread, and the grouping tags with their latest times, as the original's
// convo-to-summary did.
//
// Kept incrementally: the handler notes which document of which message changed
// (process_later), and the later_handler — once per batch of pages — brings each touched
// conversation's stored summary forward by the changed messages alone when it can (new messages
// that come after the latest one; a new attachment list, an archived flag), and rebuilds the
// summary from all the conversation's messages otherwise (a message earlier than the latest, a
// changed body, seen flag, deletion or grouping tag, a conversation with no summary yet). Both
// give the same summary: it is a function of the conversation's messages in order.
const SUMMARISED = ["rd.msg.conversation", "rd.msg.body", "rd.msg.seen", "rd.msg.deleted", "rd.msg.archived",
  "rd.msg.grouping-tag", "rd.msg.attachment-summary"];
// The documents read per message, in this order (see messageOf).
const PER_MESSAGE = SUMMARISED.slice(1);
// Changes to a message already summarised that the stored summary absorbs without a rebuild.
const ABSORBED = new Set(["rd.msg.conversation", "rd.msg.archived", "rd.msg.attachment-summary"]);
// And changes it absorbs when the document is at its first revision, so the summary was made
// either before it existed or from it (a message is often summarised a batch before all its
// documents are read): a body (the summary had this one: nothing to do), a grouping tag (added:
// adding it twice changes nothing), a seen flag saying unread or a deletion flag saying not
// deleted (what no document meant: nothing to do).
function firstRevisionAbsorbed(schema, doc) {
  if (!doc || !String(doc._rev).startsWith("1-")) return false;
  if (schema === "rd.msg.body" || schema === "rd.msg.grouping-tag") return true;
  if (schema === "rd.msg.seen") return !doc.seen;
  if (schema === "rd.msg.deleted") return !doc.deleted;
  return false;
}

// Only the fields a summary uses: a body's text stays in the store.
// (A grouping tag's contributors too: see otherTags.)
const FIELDS = ["from", "from_display", "to", "to_display", "cc", "subject", "timestamp",
  "body_preview", "seen", "deleted", "archived", "tag", "attachments", "rd_schema_items"];
const SUMMARY_FIELDS = ["subject", "messages", "message_ids", "unread_ids", "identities", "from_display",
  "grouping-timestamp", "unread_grouping_tags", "all_grouping_tags", "unread_grouping_timestamp", "other_grouping_tags"];

const keyText = (key) => JSON.stringify(key);

// A string's hash (FNV-1a), to share conversations among the later_handler's calls.
function hashOf(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619) >>> 0;
  return h;
}

// The tags a message's grouping-tag document was given by the extensions whose tag did not win
// (a recipient's, where a list's won). A conversation that had one of those as its tag while
// the winner was yet to come leaves that group when it comes: the summary names them, so that
// group-summary counts those groups again — whichever order the tags came in.
function otherTags(doc) {
  const items = (doc && doc.rd_schema_items) || {};
  const others = [];
  for (const ext of Object.keys(items)) {
    const own = items[ext] && items[ext].schema;
    if (own && typeof own.tag === "string" && own.tag !== doc.tag) others.push(own.tag);
  }
  return others;
}

// A message as a summary sees it, from its documents (PER_MESSAGE order); null when it has no
// body or is deleted (it is then left out of the summary).
function messageOf(key, docs) {
  const [body, seen, deleted, archived, tag, attachments] = docs;
  if (!body || (deleted && deleted.deleted)) return null;
  return { key, body, seen: Boolean(seen && seen.seen), archived: Boolean(archived && archived.archived),
           tag: tag && tag.tag, otherTags: otherTags(tag), attachments: (attachments && attachments.attachments) || [] };
}

// A conversation's order: by timestamp, then by key.
function order(a, b) {
  return (a.body.timestamp || 0) - (b.body.timestamp || 0) || (keyText(a.key) < keyText(b.key) ? -1 : 1);
}

// A message as the summary's `messages` lists it.
function shown(m) {
  return {
    id: m.key,
    schemas: {
      "rd.msg.body": {
        from: m.body.from || null, from_display: m.body.from_display || null, to: m.body.to || [],
        to_display: m.body.to_display || [], subject: m.body.subject || null,
        timestamp: m.body.timestamp || null, body_preview: m.body.body_preview || "",
      },
      "rd.msg.seen": { seen: m.seen },
    },
    attachments: m.attachments,
  };
}

// What a summary accumulates over its messages in order; `from` continues a stored summary.
function Tally(from) {
  this.subject = from ? from.subject : null;
  this.latest = from ? from.messages.slice() : [];
  this.ids = from ? from.message_ids.slice() : [];
  this.unread = from ? from.unread_ids.slice() : [];
  this.identities = from ? from.identities.slice() : [];
  this.seenIds = new Set(this.identities.map(keyText));
  this.fromDisplay = from ? from.from_display.slice() : [];
  this.groupTimes = new Map(from ? from["grouping-timestamp"] : []);
  this.unreadTags = new Set(from ? from.unread_grouping_tags : []);
  this.otherTags = new Set(from ? from.other_grouping_tags || [] : []);
}

// Adds the next message (in conversation order).
Tally.prototype.add = function (m) {
  if (this.subject === null && m.body.subject) this.subject = m.body.subject;
  this.latest.push(shown(m));
  if (this.latest.length > 3) this.latest.shift();
  this.ids.push(m.key);
  if (!m.seen) this.unread.push(m.key);
  for (const id of [m.body.from].concat(m.body.to || [], m.body.cc || [])) {
    if (!Array.isArray(id) || this.seenIds.has(keyText(id))) continue;
    this.seenIds.add(keyText(id));
    this.identities.push(id);
  }
  if (m.body.from_display && !this.fromDisplay.includes(m.body.from_display)) this.fromDisplay.push(m.body.from_display);
  this.tag(m);
};

// Counts a message's grouping tag (again: counting one twice changes nothing).
Tally.prototype.tag = function (m) {
  for (const t of m.otherTags) this.otherTags.add(t);
  if (m.tag) {
    this.groupTimes.set(m.tag, Math.max(this.groupTimes.get(m.tag) || 0, m.body.timestamp || 0));
    if (!m.seen) this.unreadTags.add(m.tag);
  }
};

Tally.prototype.summary = function () {
  const times = [...this.groupTimes.entries()].sort();
  return {
    subject: this.subject,
    messages: this.latest,
    message_ids: this.ids,
    unread_ids: this.unread,
    identities: this.identities,
    from_display: this.fromDisplay,
    "grouping-timestamp": times,
    unread_grouping_tags: [...this.unreadTags].sort(),
    all_grouping_tags: [...this.groupTimes.keys()].sort(),
    // The unread tags with their times, for group-summary's ordered index.
    unread_grouping_timestamp: times.filter((t) => this.unreadTags.has(t[0])),
    other_grouping_tags: [...this.otherTags].filter((t) => !this.groupTimes.has(t)).sort(),
  };
};

// The summary of `members` (keys) from their documents, read PER_MESSAGE per member; null
// when none of them is a live message.
function summarise(members, docs) {
  const per = PER_MESSAGE.length;
  const messages = members.map((key, i) => messageOf(key, docs.slice(i * per, i * per + per))).filter(Boolean);
  if (!messages.length) return null;
  messages.sort(order);
  const tally = new Tally(null);
  for (const m of messages) tally.add(m);
  return tally.summary();
}

// The summaries of `convs` from all their messages (null for a conversation with no live
// message), and their members: the members of all conversations in one call, then the
// documents of all of them in one read.
function summariseAll(convs) {
  const members = find_schemas_each("rd.msg.conversation", "conversation_id", convs, 1000000, []).map((docs) => docs.map((d) => d.rd_key));
  const wanted = [];
  for (const keys of members) for (const key of keys) for (const schema of PER_MESSAGE) wanted.push([key, schema]);
  const docs = wanted.length ? open_schemas(wanted, FIELDS) : [];
  let at = 0;
  const summaries = members.map((keys) => {
    const mine = docs.slice(at, at + keys.length * PER_MESSAGE.length);
    at += keys.length * PER_MESSAGE.length;
    return summarise(keys, mine);
  });
  return { summaries, members };
}

// Emits (or, for a conversation left with no message, withdraws) the summaries of `convs`
// rebuilt from all their messages, in slices so one read never holds every message of a large
// mailbox.
function rebuild(convs) {
  for (let i = 0; i < convs.length; i += 500) {
    const slice = convs.slice(i, i + 500);
    const done = summariseAll(slice);
    done.summaries.forEach((summary, j) => {
      if (summary) emit_schema("rd.conv.summary", summary, { rd_key: slice[j] });
      else withdraw_schema("rd.conv.summary", { rd_key: slice[j] });
    });
  }
}

// The stored summary brought forward by a conversation's changed messages, or undefined when
// it has to be rebuilt. `changes`: [{key, schemas: Set (null: unknown)}], `docs(key)` the
// message's documents (PER_MESSAGE order, with their revisions).
function bringForward(stored, changes, docs) {
  if (!stored || !Array.isArray(stored.message_ids) || !Array.isArray(stored.unread_grouping_timestamp)) return undefined;
  const summarised = new Set(stored.message_ids.map(keyText));
  const added = [];
  const attachments = new Map();
  const tagged = [];
  for (const c of changes) {
    const mine = docs(c.key);
    const m = messageOf(c.key, mine);
    if (!summarised.has(keyText(c.key))) {
      if (m) added.push(m); // a new message (or one that is still no live message: nothing)
      continue;
    }
    if (c.schemas === null || !m) return undefined;
    for (const s of c.schemas) {
      if (!ABSORBED.has(s) && !firstRevisionAbsorbed(s, mine[PER_MESSAGE.indexOf(s)])) return undefined;
    }
    attachments.set(keyText(c.key), m.attachments);
    if (c.schemas.has("rd.msg.grouping-tag")) tagged.push(m);
  }
  added.sort(order);
  const last = stored.messages[stored.messages.length - 1];
  const lastMessage = last && { key: last.id, body: { timestamp: last.schemas["rd.msg.body"].timestamp } };
  if (added.length && lastMessage && order(lastMessage, added[0]) > 0) return undefined; // not at the end
  const tally = new Tally(stored);
  // Of the messages already summarised only the latest three show their attachments.
  tally.latest = tally.latest.map((s) => (attachments.has(keyText(s.id)) ? Object.assign({}, s, { attachments: attachments.get(keyText(s.id)) }) : s));
  for (const m of tagged) tally.tag(m);
  for (const m of added) tally.add(m);
  return tally.summary();
}

// What changed, from the later_handler's values: per message {key, schemas} (a Set of the
// schemas whose documents changed; null: unknown, as for a document deleted), and the
// conversations to rebuild. A value queued by an earlier version of this extension says
// nothing of what changed: a key is a message changed in some way, a {conv} a conversation
// rebuilt with all its members asked whether they moved.
function whatChanged(values) {
  const changed = new Map();
  const rebuilt = new Map();
  const note = (key, schema) => {
    const k = keyText(key);
    if (!changed.has(k)) changed.set(k, { key, schemas: new Set() });
    const c = changed.get(k);
    if (schema === null) c.schemas = null;
    else if (c.schemas) c.schemas.add(schema);
  };
  for (const v of values) {
    if (Array.isArray(v)) note(v, null);
    else if (v && v.key) note(v.key, typeof v.schema === "string" ? v.schema : null);
    else if (v && Array.isArray(v.deleted)) note(v.deleted[0], null); // a document of it went
    else if (v && v.conv) rebuilt.set(keyText(v.conv), v.conv);
  }
  const convs = [...rebuilt.values()];
  if (convs.length) {
    for (const docs of find_schemas_each("rd.msg.conversation", "conversation_id", convs, 1000000, [])) {
      for (const d of docs) note(d.rd_key, null);
    }
  }
  return { list: [...changed.values()], rebuilt };
}

extension({
  id: "rd.ext.core.convo-to-summary",
  source_fields: ["conversation_id"],
  // Summaries are found by their messages too: see the later_handler.
  indexes: [["rd.msg.conversation", "conversation_id"], ["rd.conv.summary", "message_ids[]"]],
  // Every thread's call gets every value and takes the conversations of its share: two calls
  // bringing one stored summary forward by different messages would each write it without
  // the other's, and which conversation a value is about is known only once it is looked up.
  later_in_parts: "shared",
  // A message's document that goes (a withdrawn grouping tag, a deleted message) changes its
  // summary too.
  later_deletions: true,
  filter(id, rev, schema_id) {
    return id.startsWith("rc!email.") && SUMMARISED.includes(schema_id);
  },
  handler(doc) {
    process_later({ key: doc.rd_key, schema: doc.rd_schema_id });
  },
  later_handler(values, share) {
    const mine = (convText) => !share || hashOf(convText) % share.count === share.index;
    const changes = whatChanged(values);
    const current = changes.list.length ? open_schemas(changes.list.map((c) => [c.key, "rd.msg.conversation"]), ["conversation_id"]) : [];
    const convOf = new Map();
    const byConv = new Map();
    changes.list.forEach((c, i) => {
      const conv = current[i] && current[i].conversation_id;
      if (conv === undefined || conv === null) return; // not in a conversation yet
      const k = keyText(conv);
      convOf.set(keyText(c.key), k);
      if (!byConv.has(k)) byConv.set(k, { conv, changes: [] });
      byConv.get(k).changes.push(c);
    });
    const rebuilt = changes.rebuilt;
    // A message that moved to another conversation (two merged when a later message joined
    // them) is still claimed by its old conversation's summary: that conversation is rebuilt —
    // or withdrawn, when nothing is left in it. Only a message whose conversation document
    // changed can have moved.
    const movable = changes.list.filter((c) => c.schemas === null || c.schemas.has("rd.msg.conversation")).map((c) => c.key);
    for (let i = 0; i < movable.length; i += 5000) {
      const slice = movable.slice(i, i + 5000);
      find_schemas_each("rd.conv.summary", "message_ids[]", slice, 100, []).forEach((found, j) => {
        for (const s of found) {
          if (keyText(s.rd_key) !== convOf.get(keyText(slice[j]))) rebuilt.set(keyText(s.rd_key), s.rd_key);
        }
      });
    }
    for (const k of rebuilt.keys()) byConv.delete(k);
    for (const k of [...byConv.keys()]) if (!mine(k)) byConv.delete(k);
    for (const k of [...rebuilt.keys()]) if (!mine(k)) rebuilt.delete(k);
    // The stored summaries, and the changed messages' documents, each in one read.
    const convs = [...byConv.values()];
    const stored = convs.length ? open_schemas(convs.map((c) => [c.conv, "rd.conv.summary"]), SUMMARY_FIELDS) : [];
    const keys = [];
    convs.forEach((c, i) => { if (stored[i]) for (const ch of c.changes) keys.push(ch.key); });
    const read = keys.length ? open_schemas(keys.flatMap((key) => PER_MESSAGE.map((s) => [key, s])), FIELDS.concat("_rev")) : [];
    const at = new Map(keys.map((key, i) => [keyText(key), i * PER_MESSAGE.length]));
    const docs = (key) => read.slice(at.get(keyText(key)), at.get(keyText(key)) + PER_MESSAGE.length);
    convs.forEach((c, i) => {
      const summary = bringForward(stored[i], c.changes, docs);
      if (summary === undefined) rebuilt.set(keyText(c.conv), c.conv);
      else emit_schema("rd.conv.summary", summary, { rd_key: c.conv });
    });
    rebuild([...rebuilt.values()]);
  },
});
