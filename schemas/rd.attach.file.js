// An attachment of a message (a MIME part that is not its text): written by
// rd.ext.core.email-to-attach, keyed ["attach", [message key, "file", name]].
schema({
  id: "rd.attach.file",
  version: 1,
  fields: {
    name: "string", // the part's filename, else subpart-<n>; unique in the message
    content_type: "string", // lower-cased
    length: "integer", // decoded bytes
    visible: "boolean",
    message: "key", // the message's rd_key
    part: "integer", // index into the message's rd.msg.email multipart_info
  },
  validate(doc) {
    if (doc.name === "") return "name is empty";
    if (doc.length < 0) return "length is negative";
    if (doc.part < 0) return "part is negative";
  },
});
