// A message to send: the reply confirming a mailing list unsubscription, written by
// rd.ext.core.msg-email-to-mailinglist on the confirmation request's rd_key.
schema({
  id: "rd.msg.outgoing.simple",
  version: 1,
  fields: {
    from: "identity?", // null when the request had no To: to answer from
    from_display: "string?",
    to: "[identity]",
    to_display: "[string]",
    subject: "string",
    body: "string",
    in_reply_to: "key", // the rd_key of the message answered
    outgoing_state: "string", // "outgoing"
  },
  expandable: ["to"],
  validate(doc) {
    if (doc.to.length === 0) return "to is empty";
    if (doc.to.length !== doc.to_display.length) return "to and to_display differ in length";
    if (doc.outgoing_state === "") return "outgoing_state is empty";
  },
});
