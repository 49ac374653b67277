// rd.msg.email → rd.msg.conversation: a message joins the conversation of the messages it
// answers (In-Reply-To, References); a later message that links two conversations merges them
// (find_and_emit_conversation), as the original's rd.ext.core.msg-email-to-convo did.
function messageIds(headers, name) {
  const ids = [];
  for (const value of headers[name] || []) {
    for (const m of value.matchAll(/<([^<>\s]+)>/g)) ids.push(m[1]);
  }
  return ids;
}

extension({
  id: "rd.ext.core.msg-email-to-convo",
  source_schemas: ["rd.msg.email"],
  // Re-run when a conversation it looked at changes (see find_and_emit_conversation).
  uses_dependencies: true,
  // It writes the conversation of every message it merges, not only its own: a re-run that no
  // longer mentions a message (because another run already moved it) must not withdraw it.
  category: "smart",
  handler(doc) {
    const headers = doc.headers || {};
    const related = messageIds(headers, "references").concat(messageIds(headers, "in-reply-to"));
    const keys = [doc.rd_key];
    for (const id of related) {
      const key = ["email", id];
      if (!keys.some((k) => k[1] === id)) keys.push(key);
    }
    find_and_emit_conversation(keys);
  },
});
