// Any attachment document (rd_key ["attach", [message key, …]]) → rd.msg.attachment-summary of
// its message: every attachment of the message and its schemas, rebuilt whenever one changes
// (filter + process_later, as in the original, so a page of attachments costs one rebuild per
// message).
extension({
  id: "rd.ext.core.msg-attachment-summary",
  source_fields: [],
  indexes: [["rd.attach.file", "message"], ["rd.attach.link", "message"]],
  later_in_parts: true,
  filter(id, rev, schema_id) {
    return id.startsWith("rc!attach.") && (schema_id === "rd.attach.file" || schema_id === "rd.attach.link");
  },
  handler(doc) {
    const inner = doc.rd_key[1];
    if (Array.isArray(inner) && Array.isArray(inner[0])) process_later(inner[0]);
  },
  later_handler(messages) {
    const seen = new Set();
    const keys = messages.filter((key) => {
      const k = JSON.stringify(key);
      return !seen.has(k) && seen.add(k);
    });
    // Every message's attachments of each schema in one call.
    const found = ["rd.attach.file", "rd.attach.link"].map((schema) => [schema, find_schemas_each(schema, "message", keys, 1000000, [])]);
    keys.forEach((key, i) => {
      const attachments = [];
      for (const [schema, lists] of found) {
        for (const a of lists[i]) attachments.push({ id: a.rd_key, schemas: { [schema]: null } });
      }
      attachments.sort((a, b) => (JSON.stringify(a.id) < JSON.stringify(b.id) ? -1 : 1));
      emit_schema("rd.msg.attachment-summary", { attachments }, { rd_key: key });
    });
  },
});
