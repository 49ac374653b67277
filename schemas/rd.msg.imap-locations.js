// Where an IMAP account keeps a message: written by `raindrop sync` (proto.imap), every
// account's locations together (an empty list: the message is in no folder any more).
schema({
  id: "rd.msg.imap-locations",
  version: 1,
  fields: {
    // {account, folder_name, folder_delim (null when the server gives none), uid}
    locations: "[object]",
  },
  validate(doc) {
    for (const l of doc.locations) {
      if (typeof l.account !== "string" || typeof l.folder_name !== "string")
        return "a location needs account and folder_name strings";
      if (l.folder_delim !== null && l.folder_delim !== undefined && typeof l.folder_delim !== "string")
        return "folder_delim must be a string or null";
      if (!Number.isInteger(l.uid) || l.uid < 0) return "a location's uid must be a whole number >= 0";
    }
  },
});
