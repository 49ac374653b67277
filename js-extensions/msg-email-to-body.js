// rd.msg.email → rd.msg.body: who, to whom, subject, when, and the text, as the original's
// rd.ext.core.msg-email-to-body did. Identities are ["email", lower-cased address].

// Splits an address list ("A <a@x>, \"B, Jr\" <b@y>, c@z") into {name, address}.
function parseAddresses(text) {
  const out = [];
  let cur = "", quoted = false, angle = 0;
  const flush = () => {
    const s = cur.trim();
    cur = "";
    if (!s) return;
    const m = /^(.*?)\s*<([^>]*)>\s*$/.exec(s);
    if (m) {
      const name = m[1].trim().replace(/^"(.*)"$/, "$1").trim();
      out.push({ name: name || null, address: m[2].trim() });
    } else {
      out.push({ name: null, address: s.replace(/^"(.*)"$/, "$1") });
    }
  };
  for (const ch of text) {
    if (ch === '"') quoted = !quoted;
    else if (ch === "<" && !quoted) angle++;
    else if (ch === ">" && !quoted && angle > 0) angle--;
    if (ch === "," && !quoted && angle === 0) flush();
    else cur += ch;
  }
  flush();
  return out;
}

function first(headers, name) {
  const v = headers[name];
  return v && v.length ? v[0] : null;
}

function identities(headers, name) {
  const list = [];
  for (const value of headers[name] || []) list.push(...parseAddresses(value));
  return list.filter((a) => a.address.includes("@"));
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
      body_preview: body.replace(/^>.*$/gm, "[...]").replace(/\s+/g, " ").trim().slice(0, 140),
    };
    const date = first(headers, "date");
    const ts = date ? Date.parse(date.replace(/\s*\([^)]*\)\s*$/, "")) : NaN;
    if (!Number.isNaN(ts)) items.timestamp = Math.floor(ts / 1000);
    const from = identities(headers, "from")[0];
    if (from) {
      items.from = ["email", from.address.toLowerCase()];
      items.from_display = from.name || from.address;
    }
    for (const field of ["to", "cc"]) {
      const people = identities(headers, field);
      if (people.length) {
        items[field] = people.map((p) => ["email", p.address.toLowerCase()]);
        items[field + "_display"] = people.map((p) => p.name || p.address);
      }
    }
    emit_schema("rd.msg.body", items);
  },
});
