// Which group a message is shown in (the highest confidence wins): written by the *-grouping-tag
// extensions, msg-email-to-facebook-notification and msg-email-to-tweet-notification.
schema({
  id: "rd.msg.grouping-tag",
  version: 1,
  fields: {
    tag: "string",
  },
  validate(doc) {
    if (doc.tag === "") return "tag is empty";
  },
});
