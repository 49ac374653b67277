// rd.msg.body.quoted → rd.attach.link: one document per link in the message's own (unquoted)
// text, keyed ["attach", [message key, url]], as the original's hyperlink extension did.
extension({
  id: "rd.ext.core.msg-body-quoted-to-hyperlink",
  source_schemas: ["rd.msg.body.quoted"],
  source_fields: ["parts"],
  handler(doc) {
    const seen = new Set();
    for (const part of doc.parts || []) {
      // (no "http": no link; most text has none)
      if (part.type === "quote" || part.text.indexOf("http") < 0) continue;
      for (const m of part.text.matchAll(/\bhttps?:\/\/[^\s<>"')\]]+/g)) {
        const url = m[0].replace(/[.,;:!?]+$/, "");
        if (seen.has(url)) continue;
        seen.add(url);
        const u = /^(\w+):\/\/([^/:?#]+)(?::(\d+))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$/.exec(url);
        if (!u) continue;
        emit_schema("rd.attach.link", {
          url, scheme: u[1], domain: u[2].replace(/^www\./, ""), hostname: u[2],
          port: u[3] ? Number(u[3]) : null, path: u[4] || "/", query: u[5] || "", fragment: u[6] || "",
          message: doc.rd_key,
        }, { rd_key: ["attach", [doc.rd_key, url]] });
      }
    }
  },
});
