// A conversation at a glance, keyed by its conversation id (["conv", …]): written by
// rd.ext.core.convo-to-summary, brought forward (or rebuilt) whenever one of its messages
// changes. Version 2 added unread_grouping_timestamp, the ordered index group-summary asks.
schema({
  id: "rd.conv.summary",
  version: 2,
  fields: {
    subject: "string?", // the first message's that has one, else null
    // The latest three: {id, schemas: {"rd.msg.body": {…}, "rd.msg.seen": {seen}}, attachments}
    messages: "[object]",
    message_ids: "[key]", // every live message, oldest first
    unread_ids: "[key]",
    identities: "[identity]", // everyone who wrote or was written to
    from_display: "[string]",
    "grouping-timestamp": "[[string|number]]", // [tag, latest timestamp of its messages]
    unread_grouping_tags: "[string]",
    all_grouping_tags: "[string]",
    // The pairs of grouping-timestamp whose tag is unread: group-summary asks them in order
    // (the latest unread conversations of a group) and counts them, without reading documents.
    unread_grouping_timestamp: "[[string|number]]",
    // Tags its messages were given by extensions whose tag lost to another's (a recipient's, to
    // a list's): group-summary counts those groups again, which the conversation may have left.
    other_grouping_tags: "[string]?",
  },
  expandable: ["message_ids", "identities", "unread_grouping_tags", "all_grouping_tags", "unread_grouping_timestamp"],
  validate(doc) {
    if (doc.message_ids.length === 0) return "message_ids is empty (a conversation without messages has no summary)";
    if (doc.messages.length > 3 || doc.messages.length > doc.message_ids.length) return "messages holds more than the latest three";
    if (doc.unread_ids.length > doc.message_ids.length) return "more unread_ids than message_ids";
    for (const m of doc.messages) {
      if (!Array.isArray(m.id) || m.schemas === null || typeof m.schemas !== "object") return "a message needs id and schemas";
    }
    for (const g of doc["grouping-timestamp"]) {
      if (g.length !== 2 || typeof g[0] !== "string" || typeof g[1] !== "number") return "grouping-timestamp holds [tag, timestamp] pairs";
    }
    if (doc.unread_grouping_tags.length > doc.all_grouping_tags.length) return "more unread_grouping_tags than all_grouping_tags";
    if (doc.unread_grouping_timestamp.length !== doc.unread_grouping_tags.length) return "unread_grouping_timestamp does not pair each unread tag";
  },
  upgrade(doc, from) {
    if (from < 2) {
      const unread = doc.unread_grouping_tags || [];
      doc.unread_grouping_timestamp = (doc["grouping-timestamp"] || []).filter((g) => unread.includes(g[0]));
    }
    return doc;
  },
});
