// A handler that failed, against its source (or, for a later_handler, keyed ["ext", …]):
// written by the pipeline; `raindrop retry-errors` re-runs the sources and removes these.
schema({
  id: "rd.core.error",
  version: 1,
  fields: {
    // {ext_id, kind, message, file, line, stack, source: [doc id, rev]}; a failed
    // later_handler call's also holds later_values and later_queue.
    error_details: "object",
  },
  validate(doc) {
    const d = doc.error_details;
    if (typeof d.ext_id !== "string" || d.ext_id === "") return "error_details.ext_id is not a non-empty string";
    if (typeof d.kind !== "string" || typeof d.message !== "string") return "error_details needs kind and message strings";
    if (!Array.isArray(d.source) || d.source.length !== 2) return "error_details.source is not [doc id, rev]";
  },
});
