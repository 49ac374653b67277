// The conversation a message is in: written by rd.ext.core.msg-email-to-convo (through
// find_and_emit_conversation) and rd.ext.core.msg-dsn-to-notification (a bounce joins its message's).
schema({
  id: "rd.msg.conversation",
  version: 1,
  fields: {
    conversation_id: "key", // ["conv", a message's rd_key]; merged conversations take the smallest
  },
  validate(doc) {
    if (doc.conversation_id[0] !== "conv") return 'conversation_id is not ["conv", …]';
  },
});
