// A schema definition as installed in the database, keyed ["schema", id]: written by Raindrop
// itself from schemas/<id>.js.
schema({
  id: "rd.schema.definition",
  version: 1,
  fields: {
    id: "string",
    version: "integer",
    fields: "object", // field name → type string
    expandable: "[string]",
    open: "boolean",
    has_validate: "boolean",
    has_upgrade: "boolean",
    source: "string", // the file's text
    file: "string",
  },
  validate(doc) {
    if (doc.id === "") return "id is empty";
    if (doc.version < 1) return "version is below 1";
    for (const name in doc.fields) {
      if (typeof doc.fields[name] !== "string") return `the type of field ${name} is not a string`;
      if (name.startsWith("_") || name.startsWith("rd_")) return `field ${name}: names starting _ or rd_ are the model's`;
    }
    for (const name of doc.expandable) {
      if (!Object.prototype.hasOwnProperty.call(doc.fields, name)) return `expandable names ${name}, not a field`;
    }
  },
});
