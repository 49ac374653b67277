// Any attachment document (rd_key ["attach", [message key, …]]) → rd.msg.attachment-summary of
// its message: every attachment of the message and its schemas, rebuilt whenever one changes
// (filter + process_later, as in the original, so a page of attachments costs one rebuild per
// message).
extension({
  id: "rd.ext.core.msg-attachment-summary",
  filter(id, rev, schema_id) {
    return id.startsWith("rc!attach.") && (schema_id === "rd.attach.file" || schema_id === "rd.attach.link");
  },
  handler(doc) {
    const inner = doc.rd_key[1];
    if (Array.isArray(inner) && Array.isArray(inner[0])) process_later(inner[0]);
  },
  later_handler(messages) {
    const done = new Set();
    for (const key of messages) {
      const k = JSON.stringify(key);
      if (done.has(k)) continue;
      done.add(k);
      const attachments = [];
      for (const schema of ["rd.attach.file", "rd.attach.link"]) {
        for (const a of find_schemas(schema, "message", key, 1000000, [])) {
          attachments.push({ id: a.rd_key, schemas: { [schema]: null } });
        }
      }
      attachments.sort((a, b) => (JSON.stringify(a.id) < JSON.stringify(b.id) ? -1 : 1));
      emit_schema("rd.msg.attachment-summary", { attachments }, { rd_key: key });
    }
  },
});
