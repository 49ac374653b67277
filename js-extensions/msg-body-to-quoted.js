// rd.msg.body → rd.msg.body.quoted: the body split into runs of quoted (">") and own text,
// as the original's rd.ext.core.msg-body-to-quoted did.
extension({
  id: "rd.ext.core.msg-body-to-quoted",
  source_schemas: ["rd.msg.body"],
  source_fields: ["body"],
  handler(doc) {
    const body = String(doc.body || "");
    // No ">" anywhere: no line is quoted, the whole body is one run of own text (most mail).
    if (body.indexOf(">") < 0) {
      const text = body.indexOf("\r") < 0 ? body : body.replace(/\r\n/g, "\n");
      emit_schema("rd.msg.body.quoted", { parts: text.trim() !== "" ? [{ text }] : [] });
      return;
    }
    const parts = [];
    let cur = null;
    for (const line of body.split(/\r?\n/)) {
      const quoted = /^\s*>/.test(line);
      const type = quoted ? "quote" : "text";
      const text = quoted ? line.replace(/^\s*>\s?/, "") : line;
      if (cur && cur.type === type) cur.lines.push(text);
      else parts.push((cur = { type, lines: [text] }));
    }
    emit_schema("rd.msg.body.quoted", {
      parts: parts
        .map((p) => (p.type === "quote" ? { text: p.lines.join("\n"), type: "quote" } : { text: p.lines.join("\n") }))
        .filter((p) => p.text.trim() !== ""),
    });
  },
});
