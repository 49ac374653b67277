// rd.msg.email → rd.msg.conversation: a message joins the conversation of the messages it
// answers (In-Reply-To, References); a later message that links two conversations merges them
// (find_and_emit_conversation), as the original's rd.ext.core.msg-email-to-convo did.
//
// The handler only notes each message's links (process_later); the later_handler assigns the
// conversations of all noted messages in one pass, once the documents before it are written.
// Runs one at a time over settled documents cannot race, so no message has to be re-run when a
// conversation it looked at changes (as a handler per message did: 2.6 runs per message).
function messageIds(headers, name) {
  const ids = [];
  for (const value of headers[name] || []) {
    for (const m of value.matchAll(/<([^<>\s]+)>/g)) ids.push(m[1]);
  }
  return ids;
}

// Groups of message keys that belong together: linked by one message, or already in one
// conversation. Each group's keys are sorted, so its new conversation (when none of them has
// one) does not depend on the order the messages came in.
function components(links) {
  const parent = new Map();
  const find = (x) => {
    while (parent.get(x) !== x) {
      parent.set(x, parent.get(parent.get(x)));
      x = parent.get(x);
    }
    return x;
  };
  const node = (x) => {
    if (!parent.has(x)) parent.set(x, x);
    return x;
  };
  const union = (a, b) => {
    const ra = find(node(a)), rb = find(node(b));
    if (ra !== rb) parent.set(ra, rb);
  };
  const keys = new Map();
  for (const group of links) {
    for (const key of group) {
      const k = "k" + JSON.stringify(key);
      keys.set(k, key);
      union(k, "k" + JSON.stringify(group[0]));
    }
  }
  const list = [...keys.values()];
  // This extension's own say on each message's conversation: a bounce that another extension
  // placed in its message's conversation is not linked to it here (find_and_emit_conversation
  // reads them the same way).
  const current = open_schemas(list.map((key) => [key, "rd.msg.conversation"]), ["conversation_id", "rd_schema_items"]);
  list.forEach((key, i) => {
    const own = own_fields(current[i]);
    const c = own && own.conversation_id;
    if (c !== undefined && c !== null) union("k" + JSON.stringify(key), "c" + JSON.stringify(c));
  });
  const groups = new Map();
  for (const [k, key] of keys) {
    const root = find(k);
    if (!groups.has(root)) groups.set(root, []);
    groups.get(root).push([k, key]);
  }
  return [...groups.values()].map((g) => g.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map((p) => p[1]));
}

extension({
  id: "rd.ext.core.msg-email-to-convo",
  source_schemas: ["rd.msg.email"],
  source_fields: ["headers"],
  // find_and_emit_conversation looks messages up by conversation.
  indexes: [["rd.msg.conversation", "conversation_id"]],
  // It writes the conversation of every message it merges, not only its own: a re-run that no
  // longer mentions a message (because another run already moved it) must not withdraw it.
  category: "smart",
  handler(doc) {
    const headers = doc.headers || {};
    const related = messageIds(headers, "references").concat(messageIds(headers, "in-reply-to"));
    const keys = [doc.rd_key];
    for (const id of related) {
      if (!keys.some((k) => k[1] === id)) keys.push(["email", id]);
    }
    process_later(keys);
  },
  later_handler(links) {
    for (const keys of components(links)) find_and_emit_conversation(keys);
  },
});
