// rd.msg.email → rd.msg.body: who, to whom, subject, when, and the text, as the original's
// rd.ext.core.msg-email-to-body did. Identities are ["email", lower-cased address], with the
// display names beside them; addresses and dates are read by raindrop.mail (Rust, mailparse).
// An address without a domain (`From: Whomever`, `<moderator>`, as list software and old
// gateways write) is kept as an identity of its own kind, ["local", lower-cased text]: the
// message keeps its sender, and it never merges with a real email address.

function first(headers, name) {
  const v = headers[name];
  return v && v.length ? v[0] : null;
}

function people(headers, name) {
  const list = [];
  for (const value of headers[name] || []) list.push(...raindrop.mail.addresses(value));
  return list.filter((a) => a.address);
}

function identity(person) {
  const value = person.address.toLowerCase();
  return [value.includes("@") ? "email" : "local", value];
}

const QUOTED = /^(>.*(\r?\n|$))+/gm;

function collapse(text) {
  return text.replace(QUOTED, "[...] ").replace(/\s+/g, " ").trim();
}

// The preview: the message's own words, quoted blocks as "[...]", 140 characters. Only as much
// of a long body is rewritten as those need: cut just after a newline, a body's start gives the
// start of the whole body's preview.
function preview(body) {
  for (let cut = 1024; cut < body.length; cut *= 4) {
    const nl = body.indexOf("\n", cut);
    if (nl < 0) break;
    const start = collapse(body.slice(0, nl + 1));
    if (start.length >= 140) return start.slice(0, 140);
  }
  return collapse(body).slice(0, 140);
}

extension({
  id: "rd.ext.core.msg-email-to-body",
  source_schemas: ["rd.msg.email"],
  source_fields: ["headers", "body", "timestamp"],
  category: "provider",
  handler(doc) {
    const headers = doc.headers || {};
    const body = typeof doc.body === "string" ? doc.body : "";
    const items = {
      subject: first(headers, "subject"),
      body,
      body_preview: preview(body),
    };
    const ts = typeof doc.timestamp === "number" ? doc.timestamp : raindrop.mail.date(first(headers, "date"));
    if (ts !== null && ts !== undefined) items.timestamp = ts;
    const from = people(headers, "from")[0];
    if (from) {
      items.from = identity(from);
      items.from_display = from.name || from.address;
    }
    for (const field of ["to", "cc"]) {
      const list = people(headers, field);
      if (list.length) {
        items[field] = list.map(identity);
        items[field + "_display"] = list.map((p) => p.name || p.address);
      }
    }
    emit_schema("rd.msg.body", items);
  },
});
