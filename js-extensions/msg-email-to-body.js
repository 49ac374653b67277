// rd.msg.email → rd.msg.body: who, to whom, subject, when, and the text, as the original's
// rd.ext.core.msg-email-to-body did. Identities are ["email", lower-cased address], with the
// display names beside them; addresses and dates are read by raindrop.mail (Rust, mailparse).

function first(headers, name) {
  const v = headers[name];
  return v && v.length ? v[0] : null;
}

function people(headers, name) {
  const list = [];
  for (const value of headers[name] || []) list.push(...raindrop.mail.addresses(value));
  return list.filter((a) => a.address && a.address.includes("@"));
}

extension({
  id: "rd.ext.core.msg-email-to-body",
  source_schemas: ["rd.msg.email"],
  category: "provider",
  handler(doc) {
    const headers = doc.headers || {};
    const body = typeof doc.body === "string" ? doc.body : "";
    const items = {
      subject: first(headers, "subject"),
      body,
      // The preview: the message's own words, quoted blocks as "[...]".
      body_preview: body.replace(/^(>.*(\r?\n|$))+/gm, "[...] ").replace(/\s+/g, " ").trim().slice(0, 140),
    };
    const ts = typeof doc.timestamp === "number" ? doc.timestamp : raindrop.mail.date(first(headers, "date"));
    if (ts !== null && ts !== undefined) items.timestamp = ts;
    const from = people(headers, "from")[0];
    if (from) {
      items.from = ["email", from.address.toLowerCase()];
      items.from_display = from.name || from.address;
    }
    for (const field of ["to", "cc"]) {
      const list = people(headers, field);
      if (list.length) {
        items[field] = list.map((p) => ["email", p.address.toLowerCase()]);
        items[field + "_display"] = list.map((p) => p.name || p.address);
      }
    }
    emit_schema("rd.msg.body", items);
  },
});
