// A message parsed (raindrop.mail.parse): written by rd.ext.core.msg-rfc-to-email from
// rd.msg.rfc822.
schema({
  id: "rd.msg.email",
  version: 1,
  fields: {
    headers: "object", // lower-cased name → list of decoded values
    body: "string", // what a mail client shows
    multipart: "boolean",
    multipart_info: "[object]", // the MIME leaves: {content_type, charset, filename, disposition, size}
    timestamp: "number?", // seconds since the epoch, from Date: (absent when unreadable; may be < 0)
    problems: "[string]?", // absent when there were none
  },
  validate(doc) {
    for (const name in doc.headers) {
      const v = doc.headers[name];
      if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) return `header ${name} is not a list of strings`;
    }
    for (const p of doc.multipart_info) {
      if (typeof p.content_type !== "string") return "a part has no content_type";
      if (!Number.isInteger(p.size) || p.size < 0) return "a part's size must be a whole number >= 0";
    }
  },
});
