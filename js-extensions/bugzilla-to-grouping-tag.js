// rd.msg.email with X-Bugzilla-Product → rd.msg.grouping-tag bugzilla-message (confidence 10,
// as the original's bugzilla-to-grouping-tag).
function header(doc, name) {
  const v = (doc.headers || {})[name];
  return v && v.length ? String(v[0]) : null;
}

extension({
  id: "rd.ext.core.bugzilla-to-grouping-tag",
  source_schemas: ["rd.msg.email"],
  source_fields: ["headers"],
  confidence: 10,
  handler(doc) {
    if (header(doc, "x-bugzilla-product") !== null) emit_schema("rd.msg.grouping-tag", { tag: "bugzilla-message" });
  },
});
