// A message's text split into runs of its own text and quoted (">") text: written by
// rd.ext.core.msg-body-to-quoted from rd.msg.body.
schema({
  id: "rd.msg.body.quoted",
  version: 1,
  fields: {
    parts: "[object]", // {text} or {text, type: "quote"}
  },
  validate(doc) {
    for (const p of doc.parts) {
      if (typeof p.text !== "string") return "a part has no text";
      if (p.type !== undefined && p.type !== "quote") return 'a part\'s type is "quote" or absent';
    }
  },
});
