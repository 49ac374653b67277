// Messages → rd.conv.summary of their conversation: subject, the latest three messages, who
// took part, what is unread, and the grouping tags with their latest times, as the original's
// convo-to-summary did. It is rebuilt from the store whenever anything it summarises changes
// (the filter sees every message schema it reads; process_later collects a page's messages so
// each conversation is rebuilt once per page).
const SUMMARISED = ["rd.msg.conversation", "rd.msg.body", "rd.msg.seen", "rd.msg.deleted", "rd.msg.archived",
  "rd.msg.grouping-tag", "rd.msg.attachment-summary"];

// The members of all conversations in one call, then the documents of all of them in one read:
// two host calls per conversation were most of the cost of a page of summaries.
const FIELDS = ["from", "from_display", "to", "to_display", "cc", "subject", "timestamp",
  "body_preview", "seen", "deleted", "archived", "tag", "attachments"];

// The summaries of `convs` (null for a conversation with no live message), and their members.
function summariseAll(convs) {
  const members = find_schemas_each("rd.msg.conversation", "conversation_id", convs, 1000000, []).map((docs) => docs.map((d) => d.rd_key));
  const wanted = [];
  for (const keys of members) for (const key of keys) for (const schema of SUMMARISED.slice(1)) wanted.push([key, schema]);
  // Only the fields a summary uses: a body's text stays in the store.
  const docs = wanted.length ? open_schemas(wanted, FIELDS) : [];
  const per = SUMMARISED.length - 1;
  let at = 0;
  const summaries = members.map((keys) => {
    const mine = docs.slice(at, at + keys.length * per);
    at += keys.length * per;
    return summarise(keys, mine);
  });
  return { summaries, members };
}

// Emits (or, for a conversation left with no message, withdraws) the summaries of `convs`, in
// slices so one read never holds every message of a large mailbox; returns their members.
function writeSummaries(convs) {
  const members = [];
  for (let i = 0; i < convs.length; i += 500) {
    const slice = convs.slice(i, i + 500);
    const done = summariseAll(slice);
    done.summaries.forEach((summary, j) => {
      if (summary) emit_schema("rd.conv.summary", summary, { rd_key: slice[j] });
      else withdraw_schema("rd.conv.summary", { rd_key: slice[j] });
    });
    for (const keys of done.members) members.push(...keys);
  }
  return members;
}

function summarise(members, docs) {
  const per = SUMMARISED.length - 1;
  const messages = [];
  members.forEach((key, i) => {
    const [body, seen, deleted, archived, tag, attachments] = docs.slice(i * per, i * per + per);
    if (!body || (deleted && deleted.deleted)) return;
    messages.push({ key, body, seen: Boolean(seen && seen.seen), archived: Boolean(archived && archived.archived),
                    tag: tag && tag.tag, attachments: (attachments && attachments.attachments) || [] });
  });
  if (!messages.length) return null;
  messages.sort((a, b) => (a.body.timestamp || 0) - (b.body.timestamp || 0) || (JSON.stringify(a.key) < JSON.stringify(b.key) ? -1 : 1));
  const identities = [], fromDisplay = [], seenIds = new Set();
  const groupTimes = new Map(), unreadTags = new Set();
  for (const m of messages) {
    for (const id of [m.body.from].concat(m.body.to || [], m.body.cc || [])) {
      if (!Array.isArray(id) || seenIds.has(JSON.stringify(id))) continue;
      seenIds.add(JSON.stringify(id));
      identities.push(id);
    }
    if (m.body.from_display && !fromDisplay.includes(m.body.from_display)) fromDisplay.push(m.body.from_display);
    if (m.tag) {
      groupTimes.set(m.tag, Math.max(groupTimes.get(m.tag) || 0, m.body.timestamp || 0));
      if (!m.seen) unreadTags.add(m.tag);
    }
  }
  const subjectOf = messages.find((m) => m.body.subject);
  return {
    subject: subjectOf ? subjectOf.body.subject : null,
    messages: messages.slice(-3).map((m) => ({
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
    })),
    message_ids: messages.map((m) => m.key),
    unread_ids: messages.filter((m) => !m.seen).map((m) => m.key),
    identities,
    from_display: fromDisplay,
    "grouping-timestamp": [...groupTimes.entries()].sort(),
    unread_grouping_tags: [...unreadTags].sort(),
    all_grouping_tags: [...groupTimes.keys()].sort(),
  };
}

extension({
  id: "rd.ext.core.convo-to-summary",
  source_fields: ["conversation_id"],
  // Summaries are found by their messages too: see the later_handler.
  indexes: [["rd.msg.conversation", "conversation_id"], ["rd.conv.summary", "message_ids[]"]],
  // Each conversation is summarised from the store alone: parts of the messages can be
  // summarised side by side (a conversation with messages in two parts comes out the same).
  later_in_parts: true,
  filter(id, rev, schema_id) {
    return id.startsWith("rc!email.") && SUMMARISED.includes(schema_id);
  },
  // A message's conversation document names its conversation; for the message's other
  // documents the later_handler looks it up. Conversations given directly are each in one
  // part when the values are cut into parts, so no two parts summarise the same one.
  handler(doc) {
    if (doc.rd_schema_id === "rd.msg.conversation" && doc.conversation_id) process_later({ conv: doc.conversation_id });
    else process_later(doc.rd_key);
  },
  later_handler(values) {
    const convs = new Map();
    const keys = [];
    for (const v of values) {
      if (Array.isArray(v)) keys.push(v);
      else if (v && v.conv) convs.set(JSON.stringify(v.conv), v.conv);
    }
    const unique = [...new Set(keys.map((k) => JSON.stringify(k)))].map((k) => [JSON.parse(k), "rd.msg.conversation"]);
    for (const c of unique.length ? open_schemas(unique, ["conversation_id"]) : []) {
      if (c && c.conversation_id) convs.set(JSON.stringify(c.conversation_id), c.conversation_id);
    }
    const members = writeSummaries([...convs.values()]);
    // A message that moved to another conversation (two merged when a later message joined
    // them) is still claimed by its old conversation's summary: that conversation is summarised
    // again — or withdrawn, when nothing is left in it.
    const left = new Map();
    for (const found of members.length ? find_schemas_each("rd.conv.summary", "message_ids[]", members, 100, []) : []) {
      for (const s of found) {
        const conv = s.rd_key;
        if (!convs.has(JSON.stringify(conv))) left.set(JSON.stringify(conv), conv);
      }
    }
    if (left.size) writeSummaries([...left.values()]);
  },
});
