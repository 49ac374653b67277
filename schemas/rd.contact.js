// A person, keyed ["contact", contact id]: written by emit_related_identities()
// (rd.ext.core.sent-relationships), which finds contacts by displayName.
schema({
  id: "rd.contact",
  version: 1,
  fields: {
    displayName: "string",
  },
});
