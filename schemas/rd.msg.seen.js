// Whether a message has been read: written by `raindrop sync` (\Seen), `raindrop import` of a
// Maildir (new/, or S in the flags) and the inflow API (POST /inflow/messages/seen: `seen` only).
schema({
  id: "rd.msg.seen",
  version: 1,
  fields: {
    seen: "boolean",
    outgoing_state: "string?", // "incoming" from sync and import; the inflow API leaves it out
  },
  validate(doc) {
    if (doc.outgoing_state === "") return "outgoing_state is empty";
  },
});
