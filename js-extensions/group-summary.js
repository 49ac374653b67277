// rd.conv.summary → rd.grouping.summary per grouping tag (["display-group", tag]): up to five
// unread conversations, latest first, and how many are unread, as the original's group-summary
// did (a later_handler: one update per tag per batch of pages).
//
// Neither part reads the group's conversations: a summary lists its unread tags with their
// times in unread_grouping_timestamp ([tag, time] pairs), and the megaview's rows of that
// field's elements are asked in order (the latest five) and counted — no conversation
// document is read (the embedded store sorts the group's index entries; CouchDB's view is in
// order already).
const SCHEMA = "rd.conv.summary";
const FIELD = "unread_grouping_timestamp[]";

// The latest five unread conversations of `tag`, as a full sort of all of them would give:
// latest first, then by conversation id. Rows tied with the fifth are all asked, so the order
// among them is ours, not the index's.
function latestUnread(tag) {
  const top = open_view({ schema: SCHEMA, field: FIELD, prefix: [tag], descending: true, limit: 5 });
  const entry = (row) => ({ conv: row.value.rd_key, ts: row.key[2][1] });
  let unread = top.map(entry);
  if (top.length === 5) {
    const fifth = top[4].key[2];
    const tied = open_view({ schema: SCHEMA, field: FIELD, value: fifth, limit: 1000000 });
    unread = unread.filter((u) => u.ts !== fifth[1]).concat(tied.map((row) => ({ conv: row.value.rd_key, ts: fifth[1] })));
  }
  unread.sort((a, b) => b.ts - a.ts || (JSON.stringify(a.conv) < JSON.stringify(b.conv) ? -1 : 1));
  return unread.slice(0, 5).map((u) => u.conv);
}

extension({
  id: "rd.ext.core.group-summary",
  source_fields: ["all_grouping_tags", "unread_grouping_tags", "other_grouping_tags"],
  indexes: [[SCHEMA, FIELD], [SCHEMA, "all_grouping_tags[]"]],
  // A summary that goes (its conversation merged into another) leaves its groups: which ones
  // is no longer known, so every group is counted again.
  later_deletions: true,
  filter(id, rev, schema_id) {
    return schema_id === SCHEMA;
  },
  handler(doc) {
    // other_grouping_tags: groups the conversation may have left (see convo-to-summary).
    process_later((doc.all_grouping_tags || []).concat(doc.unread_grouping_tags || [], doc.other_grouping_tags || []));
  },
  later_handler(values) {
    const tags = new Set();
    let summaryWent = false;
    for (const v of values) {
      if (Array.isArray(v)) for (const t of v) tags.add(t);
      else if (v && v.deleted) summaryWent = true;
    }
    if (summaryWent) {
      for (const row of open_view({ schema: "rd.grouping.summary", limit: 1000000 })) tags.add(row.value.rd_key[1]);
    }
    for (const tag of [...tags].sort()) {
      const unread = latestUnread(tag);
      // Two questions of the index, asked one after the other: on a database other workers
      // write meanwhile (shared workers), the count may be of an earlier moment than the
      // list. Their write queues this group again, and the next pass counts both as they are.
      const num_unread = Math.max(count_view({ schema: SCHEMA, field: FIELD, prefix: [tag] }), unread.length);
      // A group no conversation is in (any more) has no summary.
      const empty = num_unread === 0 && count_view({ schema: SCHEMA, field: "all_grouping_tags[]", value: tag }) === 0;
      if (empty) withdraw_schema("rd.grouping.summary", { rd_key: ["display-group", tag] });
      else emit_schema("rd.grouping.summary", { unread, num_unread }, { rd_key: ["display-group", tag] });
    }
  },
});
