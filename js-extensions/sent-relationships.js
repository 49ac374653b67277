// rd.msg.body sent by me → identities and contacts for everyone I wrote to: each to/cc address
// is asserted as an identity and linked to a contact (found through an existing link or the
// display name, else made), as the original's sent-relationships did.
// Everyone a message of mine went to but me, with the name I gave them (if not their address).
function recipients(doc) {
  if (!Array.isArray(doc.from)) return [];
  const mine = get_my_identities().map((i) => JSON.stringify(i));
  if (!mine.includes(JSON.stringify(doc.from))) return [];
  const out = [];
  for (const field of ["to", "cc"]) {
    const ids = doc[field] || [];
    const names = doc[field + "_display"] || [];
    ids.forEach((identity, i) => {
      if (mine.includes(JSON.stringify(identity))) return;
      out.push([identity, names[i] && names[i] !== identity[1] ? names[i] : undefined]);
    });
  }
  return out;
}

extension({
  id: "rd.ext.core.sent-relationships",
  source_schemas: ["rd.msg.body"],
  source_fields: ["from", "to", "cc", "to_display", "cc_display"],
  // emit_related_identities looks contacts up by name.
  indexes: [["rd.contact", "displayName"]],
  // A batch's contacts and links in one read.
  reads(doc) {
    return recipients(doc).flatMap(([identity, name]) => related_identities_reads([[identity, "email"]], { displayName: name }));
  },
  handler(doc) {
    for (const [identity, name] of recipients(doc)) emit_related_identities([[identity, "email"]], { displayName: name });
  },
});
