// A display group's title and the grouping tags it shows, keyed ["display-group", tag]:
// written by rd.ext.core.folder-to-grouping-tag for the folder groups.
schema({
  id: "rd.grouping.info",
  version: 1,
  fields: {
    title: "string",
    grouping_tags: "[string]",
    dynamic: "boolean",
    visible: "boolean",
  },
  expandable: ["grouping_tags"],
  validate(doc) {
    if (doc.grouping_tags.length === 0) return "grouping_tags is empty";
    if (doc.grouping_tags.some((t) => t === "")) return "a grouping tag is empty";
  },
});
