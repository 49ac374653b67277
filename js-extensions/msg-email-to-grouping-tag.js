// rd.msg.body (email) → rd.msg.grouping-tag `identity-<type>-<value>`: which group a message
// belongs in, by the original's rules. A sender flagged bulk → the sender; a message to me →
// my identity (the inflow); a recipient flagged bulk → that recipient; sent by me → me; else the
// first recipient; else the sender. The sender flags (rd.identity.sender-flags, written by a
// UI) are dependencies: flagging a sender regroups their messages.
function tagOf(identity) {
  return "identity-" + identity[0] + "-" + identity[1];
}

// The sender flags of everyone on the message: what the handler reads, and depends on.
function flagDeps(doc) {
  const from = Array.isArray(doc.from) ? doc.from : null;
  const people = (from ? [from] : []).concat(doc.to || [], doc.cc || []);
  return people.map((p) => [["identity", p], "rd.identity.sender-flags"]);
}

extension({
  id: "rd.ext.core.msg-email-to-grouping-tag",
  source_schemas: ["rd.msg.body"],
  source_fields: ["from", "to", "cc"],
  uses_dependencies: true,
  // A batch's flags in one read.
  reads: flagDeps,
  handler(doc) {
    if (doc.rd_key[0] !== "email") return;
    const from = Array.isArray(doc.from) ? doc.from : null;
    const recipients = (doc.to || []).concat(doc.cc || []);
    const deps = flagDeps(doc);
    const flags = deps.length ? open_schemas(deps) : [];
    const bulk = (i) => Boolean(flags[i] && flags[i].bulk);
    const mine = get_my_identities();
    const isMine = (p) => mine.some((m) => m[0] === p[0] && m[1] === p[1]);
    let tag = null;
    if (from && bulk(0)) tag = tagOf(from);
    if (!tag) {
      const me = recipients.find(isMine);
      if (me) tag = tagOf(me);
    }
    if (!tag) {
      const offset = from ? 1 : 0;
      const flagged = recipients.findIndex((p, i) => bulk(i + offset));
      if (flagged >= 0) tag = tagOf(recipients[flagged]);
    }
    if (!tag && from && isMine(from)) tag = tagOf(from);
    if (!tag && recipients.length) tag = tagOf(recipients[0]);
    if (!tag && from) tag = tagOf(from);
    if (tag) emit_schema("rd.msg.grouping-tag", { tag }, { deps });
  },
});
