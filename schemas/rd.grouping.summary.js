// A display group's unread conversations, keyed ["display-group", tag]: written by
// rd.ext.core.group-summary from the rd.conv.summary documents.
schema({
  id: "rd.grouping.summary",
  version: 1,
  fields: {
    unread: "[key]", // up to five conversation ids, latest first
    num_unread: "integer",
  },
  validate(doc) {
    if (doc.num_unread < 0) return "num_unread is negative";
    if (doc.unread.length > 5) return "unread holds more than five conversations";
    if (doc.unread.length > doc.num_unread) return "unread holds more conversations than num_unread";
  },
});
