// rd.conv.summary → rd.grouping.summary per grouping tag (["display-group", tag]): up to five
// unread conversations, latest first, and how many are unread, as the original's group-summary
// did (a later_handler: one rebuild per tag per page).
extension({
  id: "rd.ext.core.group-summary",
  source_fields: ["all_grouping_tags", "unread_grouping_tags"],
  indexes: [["rd.conv.summary", "unread_grouping_tags[]"]],
  filter(id, rev, schema_id) {
    return schema_id === "rd.conv.summary";
  },
  handler(doc) {
    process_later((doc.all_grouping_tags || []).concat(doc.unread_grouping_tags || []));
  },
  later_handler(tagLists) {
    const tags = new Set();
    for (const list of tagLists) for (const t of list) tags.add(t);
    if (!tags.size) return;
    for (const tag of [...tags].sort()) {
      const unread = [];
      for (const s of find_schemas("rd.conv.summary", "unread_grouping_tags[]", tag, 1000000, ["grouping-timestamp"])) {
        const at = (s["grouping-timestamp"] || []).find((g) => g[0] === tag);
        unread.push({ conv: s.rd_key, ts: at ? at[1] : 0 });
      }
      unread.sort((a, b) => b.ts - a.ts || (JSON.stringify(a.conv) < JSON.stringify(b.conv) ? -1 : 1));
      emit_schema("rd.grouping.summary", { unread: unread.slice(0, 5).map((u) => u.conv), num_unread: unread.length },
        { rd_key: ["display-group", tag] });
    }
  },
});
