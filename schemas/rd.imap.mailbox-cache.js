// What `raindrop sync` knew of an IMAP folder after its last complete sync, keyed
// ["imap-mailbox", [account, folder]]; read back by the next sync.
schema({
  id: "rd.imap.mailbox-cache",
  version: 1,
  fields: {
    account: "string",
    folder: "string",
    delim: "string?", // null when the server names no hierarchy delimiter
    uidvalidity: "integer",
    uidnext: "integer",
    messages: "[[integer|string|boolean]]", // [uid, message key, seen] per message
  },
  validate(doc) {
    if (doc.uidvalidity < 0 || doc.uidnext < 0) return "uidvalidity and uidnext are unsigned";
    for (const m of doc.messages) {
      if (m.length !== 3 || !Number.isInteger(m[0]) || m[0] < 0 || typeof m[1] !== "string" || typeof m[2] !== "boolean")
        return "a message must be [uid, message key, seen]";
    }
  },
});
