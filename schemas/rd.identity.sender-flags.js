// Flags a UI sets on a sender, keyed ["identity", identity id]; read by
// rd.ext.core.msg-email-to-grouping-tag (a bulk sender's mail is grouped by the sender).
schema({
  id: "rd.identity.sender-flags",
  version: 1,
  fields: {
    bulk: "boolean",
  },
});
