// rd.msg.rfc822 → rd.msg.email: the raw message parsed (raindrop.mail.parse, in Rust) into
// decoded headers (lower-cased name → list of values), the text body and the MIME parts, as
// the original's rd.ext.core.msg-rfc-to-email did.
extension({
  id: "rd.ext.core.msg-rfc-to-email",
  source_schemas: ["rd.msg.rfc822"],
  // A batch's raw mail in one read.
  reads_attachments: true,
  handler(doc) {
    const mail = raindrop.mail.parse_attachment(doc, "rfc822");
    if (mail === null) throw new Error("the message has no rfc822 attachment");
    const items = {
      headers: mail.headers,
      body: mail.text,
      multipart: mail.multipart,
      multipart_info: mail.parts,
    };
    if (mail.timestamp !== null) items.timestamp = mail.timestamp;
    if (mail.problems.length) items.problems = mail.problems;
    emit_schema("rd.msg.email", items);
  },
});
