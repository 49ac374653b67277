// A link in a message's own (unquoted) text: written by rd.ext.core.msg-body-quoted-to-hyperlink,
// keyed ["attach", [message key, url]].
schema({
  id: "rd.attach.link",
  version: 1,
  fields: {
    url: "string",
    scheme: "string",
    domain: "string", // the hostname without a leading "www."
    hostname: "string",
    port: "integer?", // null when the URL names none
    path: "string", // "/" when the URL has none
    query: "string", // "" when none
    fragment: "string", // "" when none
    message: "key", // the message's rd_key
  },
  validate(doc) {
    if (!doc.url.startsWith(doc.scheme + "://")) return "url does not start with its scheme";
    if (doc.hostname === "") return "hostname is empty";
    if (doc.port !== null && doc.port !== undefined && doc.port < 0) return "port is negative";
  },
});
