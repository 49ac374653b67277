// Who wrote a message to whom, its subject, date and text: written by
// rd.ext.core.msg-email-to-body from rd.msg.email.
schema({
  id: "rd.msg.body",
  version: 1,
  fields: {
    subject: "string?", // null when the message has no Subject:
    from: "identity?", // ["email", lower-cased address], or ["local", text] for one without a domain
    from_display: "string?",
    to: "[identity]?",
    to_display: "[string]?",
    cc: "[identity]?",
    cc_display: "[string]?",
    timestamp: "number?", // seconds since the epoch (may be < 0: mail dated before 1970)
    body: "string",
    body_preview: "string", // the message's own words, quoted blocks as "[...]"
  },
  expandable: ["to", "to_display", "cc", "cc_display"],
  validate(doc) {
    if (doc.body_preview.length > 140) return "body_preview over 140 characters";
    const ids = [doc.from].concat(doc.to || [], doc.cc || []);
    for (const id of ids) if (id && id[0] === "") return "an identity has an empty kind";
    for (const f of ["to", "cc"]) {
      const n = doc[f] ? doc[f].length : 0, d = doc[f + "_display"] ? doc[f + "_display"].length : 0;
      if (n !== d) return `${f} and ${f}_display differ in length`;
    }
  },
});
