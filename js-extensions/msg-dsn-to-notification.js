// rd.msg.email → rd.msg.conversation: a delivery failure report (a bounce) joins the
// conversation of the message that bounced, as the original's msg-dsn-to-notification did.
// The bounced message's Message-ID is read from the report's text (the returned headers).
extension({
  id: "rd.ext.core.msg-dsn-to-notification",
  source_schemas: ["rd.msg.email"],
  // Only the headers for every message; a bounce's text is read from the store (bounces are few).
  source_fields: ["headers"],
  // Above msg-email-to-convo: for a bounce, this extension's answer wins.
  confidence: 10,
  uses_dependencies: true,
  handler(doc) {
    const headers = doc.headers || {};
    const type = ((headers["content-type"] || [])[0] || "").toLowerCase();
    const isReport = type.includes("multipart/report") && type.includes("delivery-status");
    if (!headers["x-failed-recipients"] && !isReport) return;
    const own = doc.rd_key[1];
    const email = open_schemas([[doc.rd_key, "rd.msg.email"]], ["body"])[0];
    const text = email && typeof email.body === "string" ? email.body : "";
    for (const m of text.matchAll(/^\s*Message-ID:\s*<([^<>\s]+)>/gim)) {
      if (m[1] === own) continue;
      // Only the bounce's own conversation is decided here; the bounced message's stays
      // msg-email-to-convo's, and this one follows it (a dependency) when it changes.
      const bounced = ["email", m[1]];
      const current = open_schemas([[bounced, "rd.msg.conversation"]])[0];
      const conversation_id = current && current.conversation_id ? current.conversation_id : ["conv", bounced];
      emit_schema("rd.msg.conversation", { conversation_id }, { deps: [[bounced, "rd.msg.conversation"]] });
      return;
    }
  },
});
