// A mailing list and the user's subscription, keyed ["mailing-list", id]: read and written whole
// by rd.ext.core.msg-email-to-mailinglist and a UI (the inflow API's unsubscribe), hence open.
schema({
  id: "rd.mailing-list",
  version: 1,
  fields: {
    id: "string",
    name: "string",
    status: "string", // subscribed, unsubscribe-pending, unsubscribe-confirmed or unsubscribed
    changed_timestamp: "number", // when the status last moved (a message's date, or a UI's clock)
    changed_key: "string?", // JSON of the rd_key of the message that moved it (ties)
    info_timestamp: "number?", // the newest post's date, whose addresses and name these are
    info_key: "string?",
    identity: "identity?", // the smallest of my identities a post was sent to
    post: "object?", // {mailto?, http?} from List-Post …
    archive: "object?",
    help: "object?",
    subscribe: "object?",
    unsubscribe: "object?",
  },
  open: true,
  validate(doc) {
    const STATUSES = ["subscribed", "unsubscribe-pending", "unsubscribe-confirmed", "unsubscribed"];
    if (doc.id === "") return "id is empty";
    if (!STATUSES.includes(doc.status)) return "status is not one of " + STATUSES.join(", ");
    for (const f of ["post", "archive", "help", "subscribe", "unsubscribe"]) {
      const a = doc[f];
      if (a === null || a === undefined) continue;
      for (const k in a) {
        if ((k !== "mailto" && k !== "http") || typeof a[k] !== "string") return f + " holds only mailto and http strings";
      }
    }
  },
});
