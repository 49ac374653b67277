// The contacts an identity is linked to, keyed ["identity", identity id]: written by
// emit_related_identities() (rd.ext.core.sent-relationships).
schema({
  id: "rd.identity.contacts",
  version: 1,
  fields: {
    contacts: "[[string|null]]", // [contact id (the rd.contact's rd_key[1]), relationship or null]
  },
  expandable: ["contacts"],
  validate(doc) {
    for (const c of doc.contacts) {
      if (c.length !== 2 || typeof c[0] !== "string" || c[0] === "") return "a contact is [contact id, relationship]";
    }
  },
});
