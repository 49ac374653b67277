// rd.msg.imap-locations → rd.msg.grouping-tag folder-<name> for mail kept outside the INBOX, or
// `archived` for mail in no folder any more (an extender with confidence 5, as the original's
// folder-to-grouping-tag), and the folder's rd.grouping.info so the group exists. Mail imported
// from a Maildir (rd.msg.maildir-location, its folders) is tagged the same way.
extension({
  id: "rd.ext.core.folder-to-grouping-tag",
  source_schemas: ["rd.msg.imap-locations", "rd.msg.maildir-location"],
  category: "extender",
  confidence: 5,
  handler(doc) {
    const locations =
      doc.rd_schema_id === "rd.msg.maildir-location"
        ? (Array.isArray(doc.folders) ? doc.folders : []).map((folder_name) => ({ folder_name }))
        : Array.isArray(doc.locations) ? doc.locations : [];
    if (locations.length === 0) {
      emit_schema("rd.msg.grouping-tag", { tag: "archived" });
      return;
    }
    if (locations.some((l) => String(l.folder_name).toUpperCase() === "INBOX")) return;
    const folder = locations.map((l) => String(l.folder_name)).sort()[0];
    const tag = "folder-" + folder;
    emit_schema("rd.msg.grouping-tag", { tag });
    emit_schema("rd.grouping.info", { title: folder, grouping_tags: [tag], dynamic: true, visible: true },
      { rd_key: ["display-group", tag] });
  },
});
