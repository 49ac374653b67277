// rd.msg.email.mailing-list → rd.msg.grouping-tag mailing-list-<id> (confidence 10, as the
// original's mailing-list-to-grouping-tag): list mail is grouped by its list.
extension({
  id: "rd.ext.core.mailing-list-to-grouping-tag",
  source_schemas: ["rd.msg.email.mailing-list"],
  confidence: 10,
  handler(doc) {
    if (doc.list_id) emit_schema("rd.msg.grouping-tag", { tag: "mailing-list-" + doc.list_id });
  },
});
