// rd.msg.email → rd.msg.email.mailing-list: the list a message came through, from its List-Id
// header (Mailman, Google Groups and most list servers set one).
extension({
  id: "rd.ext.core.msg-email-to-mailinglist",
  source_schemas: ["rd.msg.email"],
  handler(doc) {
    const values = (doc.headers || {})["list-id"];
    if (!values || !values.length) return;
    const m = /<([^>]+)>/.exec(values[0]);
    const list_id = (m ? m[1] : values[0]).trim().toLowerCase();
    if (list_id) emit_schema("rd.msg.email.mailing-list", { list_id });
  },
});
