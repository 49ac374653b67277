// rd.msg.email → rd.attach.file: one document per attachment that is not the message's text,
// keyed ["attach", [message key, "file", name]], as the original's email-to-attach did.
extension({
  id: "rd.ext.core.email-to-attach",
  source_schemas: ["rd.msg.email"],
  source_fields: ["multipart_info"],
  handler(doc) {
    const parts = Array.isArray(doc.multipart_info) ? doc.multipart_info : [];
    const names = new Set();
    parts.forEach((part, i) => {
      const type = (part.content_type || "").toLowerCase();
      const inline = part.disposition !== "attachment";
      const isText = (type === "text/plain" || type === "text/html") && inline;
      // An encapsulated message shown in the body (a forward, a digest's member) is the body's
      // text, and its own attachments are listed after it.
      if (isText || type.startsWith("multipart/") || (type === "message/rfc822" && inline)) return;
      let name = part.filename || `subpart-${i + 1}`;
      while (names.has(name)) name = `${i + 1}-${name}`;
      names.add(name);
      emit_schema("rd.attach.file", {
        name,
        content_type: type,
        length: part.size || 0,
        visible: true,
        message: doc.rd_key,
        part: i,
      }, { rd_key: ["attach", [doc.rd_key, "file", name]] });
    });
  },
});
