// An assertion that an identity exists, keyed ["identity", identity id]; it has no fields
// (emitted with null items) — written by emit_related_identities() (rd.ext.core.sent-relationships).
schema({
  id: "rd.identity.exists",
  version: 1,
  fields: {},
});
