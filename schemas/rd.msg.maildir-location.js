// The Maildir folders a message was found in (INBOX, a Maildir++ subfolder without its dot, …):
// written by `raindrop import` of a Maildir (proto.import).
schema({
  id: "rd.msg.maildir-location",
  version: 1,
  fields: {
    folders: "[string]",
  },
  expandable: ["folders"],
  validate(doc) {
    if (doc.folders.some((f) => f === "")) return "a folder name is empty";
  },
});
