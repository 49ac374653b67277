// rd.msg.email with X-TwitterEmailType: is_following → rd.msg.grouping-tag
// twitter-notification (an extender with confidence 1, as the original's
// msg-email-to-tweet-notification).
extension({
  id: "rd.ext.core.msg-email-to-tweet-notification",
  source_schemas: ["rd.msg.email"],
  source_fields: ["headers"],
  category: "extender",
  confidence: 1,
  handler(doc) {
    const v = ((doc.headers || {})["x-twitteremailtype"] || [])[0];
    if (v && String(v).trim() === "is_following") emit_schema("rd.msg.grouping-tag", { tag: "twitter-notification" });
  },
});
