// The mailing list a message came through (its rd.mailing-list is ["mailing-list", list_id]):
// written by rd.ext.core.msg-email-to-mailinglist.
schema({
  id: "rd.msg.email.mailing-list",
  version: 1,
  fields: {
    list_id: "string",
  },
  validate(doc) {
    if (doc.list_id === "") return "list_id is empty";
  },
});
