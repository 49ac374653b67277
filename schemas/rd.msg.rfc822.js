// A raw message as it came in: written by `raindrop import` (proto.import) and `raindrop sync`
// (proto.imap), keyed ["email", Message-ID]; the bytes are its attachment `<ext>/rfc822`.
schema({
  id: "rd.msg.rfc822",
  version: 1,
  fields: {
    // 32 hex digits over the bytes with line endings normalised: of two different messages
    // under one Message-ID the lower digest is kept.
    content_digest: "string",
  },
  validate(doc) {
    if (!/^[0-9a-f]+$/.test(doc.content_digest)) return "content_digest is not a lower-case hex digest";
  },
});
