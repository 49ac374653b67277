// rd.msg.email with X-Facebook-Notify → rd.msg.grouping-tag facebook-notification,
// -comment or -message (an extender with confidence 1, as the original's
// msg-email-to-facebook-notification).
extension({
  id: "rd.ext.core.msg-email-to-facebook-notification",
  source_schemas: ["rd.msg.email"],
  source_fields: ["headers"],
  category: "extender",
  confidence: 1,
  handler(doc) {
    const v = ((doc.headers || {})["x-facebook-notify"] || [])[0];
    if (!v) return;
    const kind = String(v).split(";")[0].trim();
    const tag = kind === "msg" ? "facebook-message" : kind.includes("comment") ? "facebook-comment" : "facebook-notification";
    emit_schema("rd.msg.grouping-tag", { tag });
  },
});
