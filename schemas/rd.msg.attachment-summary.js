// Every attachment document (rd.attach.file, rd.attach.link) of a message: written by
// rd.ext.core.msg-attachment-summary, keyed by the message's rd_key.
schema({
  id: "rd.msg.attachment-summary",
  version: 1,
  fields: {
    attachments: "[object]", // {id: the attachment's rd_key, schemas: {schema id: null}}
  },
  validate(doc) {
    for (const a of doc.attachments) {
      if (!Array.isArray(a.id) || a.id.length !== 2 || typeof a.id[0] !== "string") return "an attachment's id is not an rd_key";
      if (a.schemas === null || typeof a.schemas !== "object" || Array.isArray(a.schemas))
        return "an attachment's schemas is not an object";
    }
  },
});
