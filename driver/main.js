// Raindrop's driver script: the first thing evaluated in every extension sandbox.
//
// In the spirit of CouchDB's couchjs `main.js`, this file owns the JavaScript side of the
// contract between the Rust host and an extension: it defines the globals an extension sees
// (`extension`, `emit_schema`, `log`, and one function per host native registered in Rust) and
// returns a control object through which the host describes the extension and runs batches of
// documents through its handler. A file of the API folder declares routes instead
// (`route({method, path, handler})`), and the host runs one request at a time through them.
//
// It runs once per sandbox global, before the extension's own file, so each extension gets its
// own copy: an extension that patches `Array.prototype.push` or replaces `emit_schema` only
// affects itself. Builtins are captured up front for the same reason.
//
// The host places a `__rd_host` object on the global before evaluating this script; it is taken
// here and deleted, so extension code never sees the raw natives:
//   __rd_host.log(level, text)        write to the daemon's log, tagged with the extension id
//   __rd_host.begin()                 a handler call starts now (the watchdog's clock)
//   __rd_host.call(name, json) -> json  call a Rust host function registered by name
//   __rd_host.lib(name) -> value      evaluate lib/<name>.js in this global, return its value
//   __rd_host.drain()                 run the promise jobs queued so far (throws what a job
//                                     could not catch; a stop from the watchdog ends it too)
//   __rd_host.natives                 the names of those host functions
//
// The script's completion value is the control object (see the end of this file).
(function (host) {
  "use strict";
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const isArray = Array.isArray;
  const StringCtor = String;
  const ErrorCtor = Error;
  const hostLog = host.log;
  const hostBegin = host.begin;
  const hostCall = host.call;
  const hostDrain = host.drain;
  const hostLib = host.lib;
  const PromiseCtor = Promise;
  const promiseResolve = Function.prototype.call.bind(Promise.resolve);
  const promiseThen = Function.prototype.call.bind(Promise.prototype.then);
  // Array methods called as functions, so an extension that patches Array.prototype (in its
  // own realm) cannot break the driver's bookkeeping.
  const uncurry = (f) => Function.prototype.call.bind(f);
  const push = uncurry(Array.prototype.push);
  const join = uncurry(Array.prototype.join);
  const slice = uncurry(Array.prototype.slice);
  const indexOf = uncurry(Array.prototype.indexOf);
  const strSplit = uncurry(String.prototype.split);
  const strLastIndexOf = uncurry(String.prototype.lastIndexOf);
  const strSlice = uncurry(String.prototype.slice);
  const strStartsWith = uncurry(String.prototype.startsWith);
  const regexTest = uncurry(RegExp.prototype.test);
  const hasOwn = uncurry(Object.prototype.hasOwnProperty);
  const charCodeAt = uncurry(String.prototype.charCodeAt);
  const LIB_NAME = /^[A-Za-z0-9_.-]+$/;
  const numberIsFinite = Number.isFinite;
  const NumberCtor = Number;
  const DRIVER_FILE = "driver/main.js";
  // An extension may ask for up to an hour per call; anything longer is a mistake (and a
  // number of milliseconds past the range of a Rust Duration would opt out of the watchdog).
  const MAX_TIME_LIMIT_MS = 3600000;
  const defineProperty = Object.defineProperty;
  const CATEGORIES = ["provider", "extender", "smart"];

  let declaration = null; // what `extension({...})` declared, validated
  let declarationError = null; // the first problem found with it
  let emitted = null; // JSON texts of the items emitted by the running handler
  let laterValues = null; // values given to process_later by the running handler
  let partial = null; // per-document outcomes of the batch being run
  let loading = true; // the file's top-level code is running (until describe())
  const routes = []; // what route({...}) declared, validated
  const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
  const ROUTE_PATH = /^(\/(:?[A-Za-z0-9_.~-]+))+\/?$|^\/$/;
  let schemaDecl = null; // what a definition file's schema({...}) declared, compiled
  const definitions = Object.create(null); // schema id → compiled definition, null (none) or false (strict)
  let violation = null; // the first schema violation of the running handler call
  const libsLoaded = []; // names given to load_lib, in order
  const libResults = Object.create(null);

  // "file:line:column" of a stack frame ("name@file:line:column").
  function frameSite(frame) {
    const at = strLastIndexOf(frame, "@");
    return at >= 0 ? strSlice(frame, at + 1) : frame;
  }

  // "file:line" of the caller `depth` frames above the function calling this.
  function callerSite(depth) {
    const lines = strSplit(StringCtor(new ErrorCtor().stack || ""), "\n");
    return frameSite(lines[depth + 1] || "");
  }

  // An error raised by the driver on behalf of an extension (a bad emit_schema call, a host
  // function that refused its arguments) is placed at the extension's line that made the
  // call — the first frame outside this file — not at the driver's own.
  function placed(e) {
    const lines = strSplit(StringCtor(e.stack || new ErrorCtor().stack || ""), "\n");
    for (let i = 0; i < lines.length; i++) {
      const site = frameSite(lines[i]);
      if (site === "" || strStartsWith(site, DRIVER_FILE + ":")) continue;
      // file:line:column — the file name itself may hold colons.
      const c2 = strLastIndexOf(site, ":");
      const c1 = c2 > 0 ? strLastIndexOf(site, ":", c2 - 1) : -1;
      if (c1 <= 0) continue;
      try {
        e.fileName = strSlice(site, 0, c1);
        e.lineNumber = NumberCtor(strSlice(site, c1 + 1, c2));
        e.columnNumber = NumberCtor(strSlice(site, c2 + 1));
      } catch (_) {
        // A frozen error keeps its own place.
      }
      break;
    }
    return e;
  }

  function apiError(Ctor, message) {
    return placed(new Ctor(message));
  }

  function fail(site, message) {
    const e = new ErrorCtor(message);
    e.site = site;
    throw e;
  }

  function describeError(e) {
    if (e !== null && typeof e === "object") {
      const out = {
        name: StringCtor(e.name || "Error"),
        message: StringCtor(e.message !== undefined ? e.message : e),
        file: e.fileName !== undefined ? StringCtor(e.fileName) : null,
        line: typeof e.lineNumber === "number" ? e.lineNumber : null,
        column: typeof e.columnNumber === "number" ? e.columnNumber : null,
        stack: e.stack !== undefined ? StringCtor(e.stack) : null,
      };
      return out;
    }
    let message;
    try {
      message = StringCtor(e);
    } catch (_) {
      message = "(an unprintable value was thrown)";
    }
    return { name: "Throw", message: "uncaught " + typeof e + ": " + message,
             file: null, line: null, column: null, stack: null };
  }

  function formatArg(v) {
    if (typeof v === "string") return v;
    try {
      const s = stringify(v);
      return s === undefined ? StringCtor(v) : s;
    } catch (_) {
      return StringCtor(v);
    }
  }

  function extension(d) {
    const site = callerSite(1);
    if (declaration !== null || declarationError !== null) {
      declarationError = declarationError || site + ": extension() called more than once";
      return;
    }
    try {
      declaration = validate(d, site);
    } catch (e) {
      declarationError = (e.site || site) + ": " + e.message;
    }
  }

  // route({method, path, handler, time_limit_ms}): an API endpoint, served under /api/.
  // `path` is matched segment by segment; a `:name` segment matches any one segment and gives
  // it to the handler as req.params.name.
  function route(r) {
    const site = callerSite(1);
    if (!loading) throw apiError(ErrorCtor, "route() may only be called at the top level of an API file, while it loads");
    try {
      push(routes, validateRoute(r, site));
    } catch (e) {
      declarationError = declarationError || (e.site || site) + ": " + e.message;
    }
  }

  function validateRoute(r, site) {
    if (r === null || typeof r !== "object") fail(site, "route() needs an object");
    const method = r.method === undefined ? "GET" : r.method;
    if (indexOf(METHODS, method) < 0) fail(site, "method must be one of " + join(METHODS, ", ") + ", not " + formatArg(method));
    if (typeof r.path !== "string" || !regexTest(ROUTE_PATH, r.path))
      fail(site, "path must be like /things/:id (segments of letters, digits and _.~-, a :name for a parameter), not " + formatArg(r.path));
    const names = [];
    const parts = strSplit(r.path, "/");
    for (let i = 0; i < parts.length; i++) {
      if (parts[i] === "." || parts[i] === "..") fail(site, "path segments . and .. are not served: " + formatArg(r.path));
      if (strSlice(parts[i], 0, 1) === ":") {
        if (indexOf(names, parts[i]) >= 0) fail(site, "path names the parameter " + parts[i] + " twice: " + formatArg(r.path));
        push(names, parts[i]);
      }
    }
    if (typeof r.handler !== "function") fail(site, "handler must be a function");
    let limit = null;
    if (r.time_limit_ms !== undefined) {
      limit = r.time_limit_ms;
      if (typeof limit !== "number" || !(limit >= 1 && limit <= MAX_TIME_LIMIT_MS))
        fail(site, "time_limit_ms must be a number of milliseconds from 1 to " + MAX_TIME_LIMIT_MS);
    }
    return { method, path: r.path, handler: r.handler, site, time_limit_ms: limit };
  }

  // The file of a "file:line:column" site.
  function siteFile(site) {
    const c2 = strLastIndexOf(site, ":");
    const c1 = c2 > 0 ? strLastIndexOf(site, ":", c2 - 1) : -1;
    return c1 > 0 ? strSlice(site, 0, c1) : site;
  }

  function validate(d, site) {
    if (d === null || typeof d !== "object") fail(site, "extension() needs an object");
    const id = d.id;
    if (typeof id !== "string" || id.length === 0) fail(site, "extension id must be a non-empty string");
    let schemas = d.source_schemas;
    if (schemas === undefined || schemas === null) schemas = null;
    else {
      let ok = isArray(schemas);
      for (let i = 0; ok && i < schemas.length; i++) ok = typeof schemas[i] === "string";
      if (!ok) fail(site, "source_schemas must be an array of schema id strings");
      schemas = slice(schemas);
    }
    const category = d.category === undefined ? "provider" : d.category;
    if (indexOf(CATEGORIES, category) < 0)
      fail(site, "category must be one of " + join(CATEGORIES, ", ") + ", not " + formatArg(category));
    const confidence = d.confidence === undefined ? 0 : d.confidence;
    if (typeof confidence !== "number" || !numberIsFinite(confidence))
      fail(site, "confidence must be a number");
    if (typeof d.handler !== "function") fail(site, "handler must be a function");
    if (d.filter !== undefined && typeof d.filter !== "function") fail(site, "filter must be a function");
    if (d.later_handler !== undefined && typeof d.later_handler !== "function")
      fail(site, "later_handler must be a function");
    if (schemas === null && d.filter === undefined)
      fail(site, "an extension without source_schemas needs a filter function");
    let fields = null;
    if (d.source_fields !== undefined) {
      let ok = isArray(d.source_fields);
      for (let i = 0; ok && i < d.source_fields.length; i++)
        ok = typeof d.source_fields[i] === "string" && d.source_fields[i].length > 0;
      if (!ok) fail(site, "source_fields must be an array of top-level field names");
      fields = slice(d.source_fields);
    }
    // [schema id, field] pairs the extension finds documents by: indexed when the pipeline
    // starts, not at the first lookup (which would build the index over every document then).
    const indexes = [];
    if (d.indexes !== undefined) {
      let ok = isArray(d.indexes);
      for (let i = 0; ok && i < d.indexes.length; i++) {
        const p = d.indexes[i];
        ok = isArray(p) && p.length === 2 && typeof p[0] === "string" && p[0].length > 0 &&
          typeof p[1] === "string" && p[1].length > 0;
        if (ok) push(indexes, [p[0], p[1]]);
      }
      if (!ok) fail(site, "indexes must be an array of [schema id, field] pairs");
    }
    const laterInParts = d.later_in_parts === undefined ? false : d.later_in_parts;
    if (typeof laterInParts !== "boolean" && laterInParts !== "shared")
      fail(site, "later_in_parts must be true, false or \"shared\"");
    if (laterInParts && d.later_handler === undefined) fail(site, "later_in_parts needs a later_handler");
    if (d.later_deletions !== undefined && typeof d.later_deletions !== "boolean") fail(site, "later_deletions must be true or false");
    if (d.later_deletions && d.later_handler === undefined) fail(site, "later_deletions needs a later_handler");
    if (d.reads !== undefined && typeof d.reads !== "function") fail(site, "reads must be a function: reads(doc) → [[rd_key, schema_id], …]");
    if (d.reads_attachments !== undefined && typeof d.reads_attachments !== "boolean") fail(site, "reads_attachments must be true or false");
    let limit = null;
    if (d.time_limit_ms !== undefined) {
      limit = d.time_limit_ms;
      if (typeof limit !== "number" || !(limit >= 1 && limit <= MAX_TIME_LIMIT_MS))
        fail(site, "time_limit_ms must be a number of milliseconds from 1 to " + MAX_TIME_LIMIT_MS + " (an hour)");
    }
    return {
      id, source_schemas: schemas, source_fields: fields, category, confidence, time_limit_ms: limit,
      uses_dependencies: !!d.uses_dependencies, indexes, later_in_parts: laterInParts === true,
      later_shared: laterInParts === "shared", later_deletions: !!d.later_deletions,
      handler: d.handler, filter: d.filter, later_handler: d.later_handler, site,
      reads: d.reads, reads_attachments: !!d.reads_attachments,
    };
  }

  // ---- Schema definitions -------------------------------------------------------------------
  //
  // A definition file calls schema({id, version, fields, expandable, open, validate, upgrade}).
  // Field types: string, number, integer, boolean, object, any, null, identity ([kind, value]),
  // key (an rd_key), [T] (an array of T), A|B (either), and a trailing ? (may be absent or null).
  // Each type compiles once to a predicate; emit_schema checks every item against its schema's
  // definition before it is written.
  const objectKeys = Object.keys;
  const isPlainObject = (v) => v !== null && typeof v === "object" && !isArray(v);
  const BASE_TYPES = {
    string: (v) => typeof v === "string",
    number: (v) => typeof v === "number" && numberIsFinite(v),
    integer: (v) => typeof v === "number" && numberIsFinite(v) && v % 1 === 0,
    boolean: (v) => typeof v === "boolean",
    object: isPlainObject,
    any: (v) => true,
    null: (v) => v === null,
    identity: (v) => isArray(v) && v.length === 2 && typeof v[0] === "string" && v[0].length > 0 &&
      (typeof v[1] === "string" || (typeof v[1] === "number" && numberIsFinite(v[1]))),
    key: (v) => isArray(v) && v.length === 2 && typeof v[0] === "string" && v[0].length > 0,
  };

  // A type's text → predicate; throws naming what it could not read.
  function compileType(text) {
    let i = 0;
    function union() {
      const alts = [single()];
      while (text[i] === "|") {
        i++;
        push(alts, single());
      }
      if (alts.length === 1) return alts[0];
      return (v) => {
        for (let k = 0; k < alts.length; k++) if (alts[k](v)) return true;
        return false;
      };
    }
    function single() {
      if (text[i] === "[") {
        i++;
        const element = union();
        if (text[i] !== "]") throw new ErrorCtor("expected ] at character " + (i + 1));
        i++;
        return (v) => {
          if (!isArray(v)) return false;
          for (let k = 0; k < v.length; k++) if (!element(v[k])) return false;
          return true;
        };
      }
      // A-z letters, read without a RegExp (whose `exec` an extension may have replaced).
      let end = i;
      while (end < text.length && charCodeAt(text, end) >= 97 && charCodeAt(text, end) <= 122) end++;
      const name = strSlice(text, i, end);
      if (name === "" || !hasOwn(BASE_TYPES, name))
        throw new ErrorCtor("unknown type " + stringify(strSlice(text, i) || text) + " (string, number, integer, boolean, object, any, null, identity, key, [T], A|B, T?)");
      i += name.length;
      return BASE_TYPES[name];
    }
    const optional = text.length > 1 && text[text.length - 1] === "?";
    if (optional) text = strSlice(text, 0, text.length - 1);
    const check = union();
    if (i !== text.length) throw new ErrorCtor("unexpected " + stringify(strSlice(text, i)) + " at character " + (i + 1));
    return { check, optional };
  }

  function describeValue(v) {
    if (v === null) return "null";
    if (isArray(v)) return "an array of " + v.length;
    if (typeof v === "number" && !numberIsFinite(v)) return StringCtor(v);
    if (typeof v === "string") return "a string";
    return "a " + typeof v;
  }

  // A schema({...}) declaration, validated and compiled (throws with `site` on a mistake).
  // Only its own members are read: an extension that set Object.prototype.open (in its own
  // realm, where a definition compiles) does not open every schema.
  function compileSchema(d, site) {
    if (d === null || typeof d !== "object") fail(site, "schema() needs an object");
    const own = (name, fallback) => (hasOwn(d, name) && d[name] !== undefined ? d[name] : fallback);
    const id = own("id", undefined);
    if (typeof id !== "string" || id.length === 0) fail(site, "schema id must be a non-empty string");
    const version = own("version", 1);
    if (typeof version !== "number" || !(version >= 1 && version <= 1000000) || version % 1 !== 0)
      fail(site, "version must be a whole number from 1");
    const fields = own("fields", undefined);
    if (!isPlainObject(fields)) fail(site, "fields must be an object: field name → type");
    const names = [], checks = Object.create(null), types = Object.create(null);
    const fieldNames = objectKeys(fields);
    for (let i = 0; i < fieldNames.length; i++) {
      const name = fieldNames[i];
      if (name === "") fail(site, "a field name cannot be empty");
      if (strStartsWith(name, "_") || strStartsWith(name, "rd_"))
        fail(site, "field " + name + ": names starting with _ or rd_ belong to the store and the document model");
      const type = fields[name];
      if (typeof type !== "string") fail(site, "field " + name + ": the type must be a string like \"string\" or \"[identity]?\"");
      try {
        checks[name] = compileType(type);
      } catch (e) {
        fail(site, "field " + name + ": " + e.message);
      }
      types[name] = type;
      push(names, name);
    }
    const expandable = own("expandable", []);
    let ok = isArray(expandable);
    for (let i = 0; ok && i < expandable.length; i++) ok = typeof expandable[i] === "string" && checks[expandable[i]] !== undefined;
    if (!ok) fail(site, "expandable must be an array of names of the schema's fields");
    const open = own("open", false);
    if (typeof open !== "boolean") fail(site, "open must be true or false");
    const validate = own("validate", undefined), upgrade = own("upgrade", undefined);
    if (validate !== undefined && typeof validate !== "function") fail(site, "validate must be a function");
    if (upgrade !== undefined && typeof upgrade !== "function") fail(site, "upgrade must be a function");
    let required = false;
    for (let i = 0; i < names.length; i++) required = required || !checks[names[i]].optional;
    return { id, version, names, checks, types, expandable: slice(expandable), open, required, validate, upgrade, site };
  }

  // schema({...}) at the top level of a definition file.
  function schema(d) {
    const site = callerSite(1);
    if (!loading) throw apiError(ErrorCtor, "schema() may only be called at the top level of a definition file, while it loads");
    if (schemaDecl !== null || declarationError !== null) {
      declarationError = declarationError || site + ": schema() called more than once";
      return;
    }
    try {
      schemaDecl = compileSchema(d, site);
    } catch (e) {
      declarationError = (e.site || site) + ": " + e.message;
    }
  }

  // The definition of schema `id` in this sandbox: evaluated from its file the first time it
  // is asked for; null when there is none, false when strict mode makes that an error.
  function definitionOf(id) {
    const known = definitions[id];
    if (known !== undefined) return known;
    const loaded = hostLib("schema:" + id);
    let def = loaded;
    if (typeof loaded === "function") {
      let d = null;
      loaded(function (decl) { d = decl; });
      def = compileSchema(d, "schemas/" + id + ".js");
    }
    definitions[id] = def;
    return def;
  }

  // Why `items` does not fit `def` — {field, reason} — or null. Own members only: a field
  // named `toString` is not found on Object.prototype.
  function checkItems(def, items) {
    for (let i = 0; i < def.names.length; i++) {
      const name = def.names[i];
      const v = hasOwn(items, name) ? items[name] : undefined;
      const c = def.checks[name];
      if (v === undefined || (v === null && !c.check(null))) {
        if (c.optional) continue;
        return { field: name, reason: v === undefined ? "the field is required and missing" : "the field is required and null" };
      }
      if (!c.check(v)) return { field: name, reason: "expected " + def.types[name] + ", got " + describeValue(v) };
    }
    if (!def.open) {
      const present = objectKeys(items);
      for (let i = 0; i < present.length; i++) {
        if (def.checks[present[i]] === undefined && items[present[i]] !== undefined)
          return { field: present[i], reason: "not a field of the schema (open: true in the definition allows others)" };
      }
    }
    if (def.validate !== undefined) {
      let answer;
      try {
        answer = def.validate(items);
      } catch (e) {
        let why;
        try {
          why = StringCtor(e !== null && typeof e === "object" && e.message !== undefined ? e.message : e);
        } catch (_) {
          why = "(an unprintable value)";
        }
        return { field: null, reason: "validate() threw: " + why };
      }
      const reason = refusal(answer);
      if (reason !== null) return { field: null, reason };
    }
    return null;
  }

  // What a validate() answer says: null (the item is fine: nothing, null or true) or why not.
  function refusal(answer) {
    if (answer === undefined || answer === null || answer === true) return null;
    if (typeof answer === "string") return answer === "" ? "validate() refused it (with an empty reason)" : answer;
    if (answer === false) return "validate() returned false";
    if (typeof answer === "object" && typeof answer.message === "string") return answer.message;
    return "validate() returned " + formatArg(answer) + " (a reason is a string; nothing means valid)";
  }

  // Checks an item about to be emitted (already written as `text`, so neither validate() nor a
  // getter changes what is written after it was checked); throws, and marks the call failed,
  // when it breaks its schema's definition. Returns the definition's version (undefined: no
  // definition).
  function checkEmit(schema_id, items) {
    const def = definitionOf(schema_id);
    if (def === null) return undefined;
    let problem = null;
    if (def === false) problem = { field: null, reason: "the schema has no definition (strict mode)" };
    else if (items !== null) problem = checkItems(def, items);
    else if (def.required) problem = { field: null, reason: "null items (no fields) for a schema with required fields" };
    if (problem === null) return def.version;
    const who = declaration !== null ? declaration.id : "the handler";
    const message = who + " emitted " + schema_id + (problem.field !== null ? ", field " + problem.field : "") + ": " + problem.reason;
    const e = apiError(TypeError, message);
    if (violation === null) violation = e;
    throw e;
  }

  function emit_schema(schema_id, items, opts) {
    if (emitted === null) throw apiError(ErrorCtor, "emit_schema() may only be called while a handler runs");
    if (typeof schema_id !== "string" || schema_id.length === 0)
      throw apiError(TypeError, "emit_schema: schema_id must be a non-empty string");
    if (items === undefined) items = null;
    if (items !== null && (typeof items !== "object" || isArray(items)))
      throw apiError(TypeError, "emit_schema(" + schema_id + "): items must be an object or null");
    const item = { schema_id, items };
    if (opts !== undefined && opts !== null) {
      if (typeof opts !== "object") throw apiError(TypeError, "emit_schema(" + schema_id + "): opts must be an object");
      if (opts.rd_key !== undefined) item.rd_key = opts.rd_key;
      if (opts.attachments !== undefined) item.attachments = opts.attachments;
      if (opts.deps !== undefined) item.deps = opts.deps;
      if (opts.rd_source !== undefined) item.rd_source = opts.rd_source;
    }
    // Serialised now, so a handler that later mutates `items` does not change what it emitted,
    // and a value JSON cannot hold fails here, at the line that emitted it.
    let text;
    try {
      text = stringify(item);
    } catch (e) {
      throw apiError(TypeError, "emit_schema(" + schema_id + "): the items cannot be written as JSON: " +
        StringCtor(e && e.message !== undefined ? e.message : e));
    }
    if (text === undefined) throw apiError(TypeError, "emit_schema(" + schema_id + "): the items cannot be written as JSON");
    const version = checkEmit(schema_id, items);
    if (version !== undefined) text = strSlice(text, 0, text.length - 1) + ',"version":' + version + "}";
    push(emitted, text);
  }

  // withdraw_schema(schema_id, {rd_key}) takes back this extension's contribution to a
  // document (the document goes when no contributor is left): for a later_handler, whose
  // outputs are not tracked per source (a conversation merged into another has no summary).
  function withdraw_schema(schema_id, opts) {
    if (emitted === null) throw apiError(ErrorCtor, "withdraw_schema() may only be called while a handler runs");
    if (typeof schema_id !== "string" || schema_id.length === 0)
      throw apiError(TypeError, "withdraw_schema: schema_id must be a non-empty string");
    const item = { schema_id, items: null, withdraw: true };
    if (opts !== undefined && opts !== null) {
      if (typeof opts !== "object") throw apiError(TypeError, "withdraw_schema: opts must be an object");
      if (opts.rd_key !== undefined) item.rd_key = opts.rd_key;
    }
    let text;
    try {
      text = stringify(item);
    } catch (e) {
      throw apiError(TypeError, "withdraw_schema(" + schema_id + "): the rd_key cannot be written as JSON");
    }
    push(emitted, text);
  }

  // load_lib(name): evaluates lib/<name>.js of the extensions folder in this extension's global
  // (its top-level functions become the extension's), once, and returns its completion value.
  // Only while the file loads: what it loaded is part of the extension's fingerprint, so an
  // edited library re-derives the outputs of the extensions that use it.
  function load_lib(name) {
    if (!loading) throw apiError(ErrorCtor, "load_lib() may only be called at the top level of an extension, while it loads");
    if (typeof name !== "string" || !regexTest(LIB_NAME, name))
      throw apiError(TypeError, "load_lib: the name of a file in the extensions folder's lib/, without .js");
    if (indexOf(libsLoaded, name) >= 0) return libResults[name];
    let result;
    try {
      result = hostLib(name);
    } catch (e) {
      // A missing library is the caller's mistake: placed at its line. An error inside the
      // library keeps the library's own place.
      throw e !== null && typeof e === "object" && e.fileName === DRIVER_FILE ? placed(e) : e;
    }
    push(libsLoaded, name);
    libResults[name] = result;
    return result;
  }

  function log() {
    const parts = [];
    for (let i = 0; i < arguments.length; i++) push(parts, formatArg(arguments[i]));
    hostLog("info", join(parts, " "));
  }

  function process_later(value) {
    if (laterValues === null) throw apiError(ErrorCtor, "process_later() may only be called while a handler runs");
    push(laterValues, value);
  }

  function defineGlobal(name, value) {
    defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  }

  function callNative(name, args) {
    let json;
    try {
      json = stringify(args);
    } catch (e) {
      throw apiError(TypeError, name + ": the arguments cannot be written as JSON");
    }
    const answer = parse(hostCall(name, json === undefined ? "[]" : json));
    if (answer.error !== undefined) throw apiError(ErrorCtor, name + ": " + answer.error);
    return answer.ok;
  }

  // Helpers from the original's extension API, built on the store-backed host functions
  // (present when the pipeline runs the extension).
  function sameJSON(a, b) {
    return stringify(a) === stringify(b);
  }

  // emit_related_identities([[identity_id, relationship], …] or [identity_id, …], {displayName})
  // asserts each identity exists, finds their contact (through any identity's existing link,
  // else by display name) or makes one, links every identity to it, and returns its id.
  function relatedPairs(identities) {
    const pairs = [];
    for (let i = 0; i < identities.length; i++) {
      const p = identities[i];
      push(pairs, isArray(p) && isArray(p[0]) ? [p[0], p.length > 1 ? p[1] : null] : [p, null]);
    }
    return pairs;
  }

  // What emit_related_identities(identities, def) reads: each identity's contact links, the
  // contact derived from the first (in one round trip, not two, on CouchDB) and, with a
  // display name, the contacts of that name — for an extension's `reads`, so that a batch's
  // are read in one request. Without `def`, only the documents (what it reads first).
  function related_identities_reads(identities, def) {
    const pairs = relatedPairs(identities);
    if (pairs.length === 0) return [];
    const wanted = [];
    for (let i = 0; i < pairs.length; i++) push(wanted, [["identity", pairs[i][0]], "rd.identity.contacts"]);
    // Derived from the first identity, so re-running gives the same contact.
    push(wanted, [["contact", "contact:" + stringify(pairs[0][0])], "rd.contact"]);
    const name = def && typeof def.displayName === "string" ? def.displayName : null;
    if (name) push(wanted, { schema: "rd.contact", field: "displayName", value: name });
    return wanted;
  }

  function emit_related_identities(identities, def) {
    const pairs = relatedPairs(identities);
    if (pairs.length === 0) return null;
    const derived = "contact:" + stringify(pairs[0][0]);
    const found = globalThis.open_schemas(related_identities_reads(identities));
    const links = slice(found, 0, pairs.length);
    const derivedDoc = found[pairs.length];
    let contact = null;
    for (let i = 0; contact === null && i < links.length; i++) {
      const l = links[i];
      if (l && isArray(l.contacts) && l.contacts.length) contact = l.contacts[0][0];
    }
    const name = def && typeof def.displayName === "string" ? def.displayName : null;
    if (contact === null && name) {
      const found = globalThis.find_schemas("rd.contact", "displayName", name, 1);
      if (found.length) contact = found[0].rd_key[1];
    }
    // What this extension made before is emitted again, not only what is missing: a re-run
    // (the extension or the driver edited) withdraws what a source no longer emits, and the
    // contacts and links it made would go.
    const mine = declaration !== null ? declaration.id : null;
    if (contact === null) contact = derived;
    if (contact === derived) {
      // Made with the name it was first given, and kept so: a later source naming the person
      // otherwise does not rename them (the result would depend on the order mail came in).
      const current = derivedDoc;
      const entry = current && current.rd_schema_items && mine !== null ? current.rd_schema_items[mine] : undefined;
      if (!current) emit_schema("rd.contact", { displayName: name || StringCtor(pairs[0][0][1]) }, { rd_key: ["contact", contact] });
      else if (entry !== undefined) {
        const kept = entry.schema ? entry.schema.displayName : current.displayName;
        if (typeof kept === "string") emit_schema("rd.contact", { displayName: kept }, { rd_key: ["contact", contact] });
      }
    }
    for (let i = 0; i < pairs.length; i++) {
      emit_schema("rd.identity.exists", null, { rd_key: ["identity", pairs[i][0]] });
      const l = links[i];
      const linked = l && isArray(l.contacts) && l.contacts.some((c) => c[0] === contact);
      const ours = l && l.rd_schema_items && mine !== null && l.rd_schema_items[mine] !== undefined;
      if (!linked || ours) emit_schema("rd.identity.contacts", { contacts: [[contact, pairs[i][1]]] }, { rd_key: ["identity", pairs[i][0]] });
    }
    return contact;
  }

  // own_fields(doc): the fields the calling extension gave a document (read with its
  // rd_schema_items), or undefined when it gave none — its own say, whichever contributor's
  // won the document. A lone contributor's fields are the document's; of several, each keeps
  // its own under `schema`.
  function own_fields(doc) {
    const mine = declaration !== null ? declaration.id : null;
    const items = doc && doc.rd_schema_items;
    if (mine === null || !items || typeof items !== "object") return undefined;
    const entry = items[mine];
    if (entry === undefined || entry === null) return undefined;
    if (!hasOwn(entry, "schema")) return doc;
    return entry.schema || undefined;
  }

  // The conversation a message's document gives it, as the calling extension sees it: its own
  // say. Another extension's choice that won the document (a bounce placed in its message's
  // conversation, at a higher confidence) is not this one's to merge by: it would join
  // conversations this one keeps apart, and whether it did would depend on which of the two
  // extensions ran first. (Outside an extension: the document's.)
  function ownConversation(doc) {
    if (!doc) return undefined;
    if (declaration === null) return doc.conversation_id;
    const own = own_fields(doc);
    return own ? own.conversation_id : undefined;
  }

  // find_and_emit_conversation([msg rd_key, …]) puts the messages in one conversation: an
  // existing one if any has one (the smallest id; the others are merged into it), else
  // ["conv", the smallest key].
  function find_and_emit_conversation(keys) {
    if (!isArray(keys) || keys.length === 0) return null;
    const wanted = [];
    for (let i = 0; i < keys.length; i++) push(wanted, [keys[i], "rd.msg.conversation"]);
    const current = globalThis.open_schemas(wanted, ["conversation_id", "rd_schema_items"]);
    // Of the conversations the messages are in, the one with the smallest id wins. The choice
    // must not depend on which message asks or on what it has yet to see: two messages handled
    // side by side, each preferring its own conversation, would pull each other back and forth
    // for ever; both choosing the smallest id converge.
    const found = [];
    for (let i = 0; i < current.length; i++) {
      const c = ownConversation(current[i]);
      if (c === undefined || c === null) continue;
      if (!found.some((o) => sameJSON(o, c))) push(found, c);
    }
    // The messages' own keys are candidates too, so the conversation is named by the smallest
    // message key it holds (or references) whatever order its messages came in: a message
    // with a smaller key than the conversation's name renames it (its members are written
    // again). In random order that happens about ln(n) times for n messages.
    let chosen = null;
    for (let i = 0; i < keys.length; i++) {
      const own = ["conv", keys[i]];
      if (chosen === null || stringify(own) < stringify(chosen)) chosen = own;
    }
    for (let i = 0; i < found.length; i++) {
      if (stringify(found[i]) < stringify(chosen)) chosen = found[i];
    }
    const others = found.filter((o) => !sameJSON(o, chosen));
    const members = slice(keys);
    // A message is moved with its conversation only when this extension put it there: one
    // that another extension placed in it (at a higher confidence, or before this one said
    // anything of it) keeps this one's say, as it would had the conversations met in another
    // order — moved, a bounce would carry its own key into the conversation's naming.
    for (let i = 0; i < others.length; i++) {
      const found = globalThis.find_schemas("rd.msg.conversation", "conversation_id", others[i], 1000000, ["conversation_id", "rd_schema_items"]);
      for (let j = 0; j < found.length; j++) {
        const own = ownConversation(found[j]);
        if (own === undefined || own === null || !sameJSON(own, others[i])) continue;
        push(members, found[j].rd_key);
      }
    }
    // With uses_dependencies, the choice is re-made whenever one of these conversation
    // documents changes: messages handled side by side in one batch then converge on one
    // conversation instead of each keeping its own.
    let deps = undefined;
    if (declaration !== null && declaration.uses_dependencies) {
      deps = [];
      for (let i = 0; i < members.length; i++) push(deps, [members[i], "rd.msg.conversation"]);
    }
    const done = [];
    for (let i = 0; i < members.length; i++) {
      const k = stringify(members[i]);
      if (indexOf(done, k) >= 0) continue;
      push(done, k);
      emit_schema("rd.msg.conversation", { conversation_id: chosen }, { rd_key: members[i], deps });
    }
    return chosen;
  }

  // No WebAssembly: its memories are reserved outside the runtime's memory cap, compiled
  // modules are not covered by the code fingerprint's idea of "the source", and extensions
  // transform documents, which JS does at the engine's JSON speed.
  delete globalThis.WebAssembly;

  defineGlobal("extension", extension);
  defineGlobal("emit_schema", emit_schema);
  defineGlobal("withdraw_schema", withdraw_schema);
  defineGlobal("log", log);
  defineGlobal("load_lib", load_lib);
  defineGlobal("route", route);
  defineGlobal("schema", schema);
  defineGlobal("process_later", process_later);
  for (const name of host.natives) {
    defineGlobal(name, function () {
      return callNative(name, slice(arguments));
    });
  }
  const nativeReadAhead = globalThis.read_ahead;
  if (indexOf(host.natives, "mail_parse") >= 0) {
    // raindrop.mail.parse(base64 bytes): headers, addresses, dates, MIME parts, text, problems.
    // raindrop.mail.addresses(header value): [{name, address}]; raindrop.mail.date(text): seconds
    // since the epoch or null. None of them throws on bad mail.
    // raindrop.mail.parse_attachment(doc, name): parse() of a stored attachment, read and parsed
    // in Rust (null when there is no such attachment).
    const mailParse = globalThis.mail_parse, mailAddresses = globalThis.mail_addresses, mailDate = globalThis.mail_date;
    const mailParseAttachment = globalThis.mail_parse_attachment;
    defineGlobal("raindrop", Object.freeze({ mail: Object.freeze({
      parse: (data) => mailParse(data),
      parse_attachment: (doc, name) => {
        if (mailParseAttachment === undefined) throw new ErrorCtor("raindrop.mail.parse_attachment needs the store");
        return mailParseAttachment(doc, name);
      },
      addresses: (text) => mailAddresses(typeof text === "string" ? text : null),
      date: (text) => mailDate(typeof text === "string" ? text : null),
    }) }));
  }
  if (indexOf(host.natives, "open_schemas") >= 0 && indexOf(host.natives, "find_schemas") >= 0) {
    defineGlobal("emit_related_identities", emit_related_identities);
    defineGlobal("related_identities_reads", related_identities_reads);
    defineGlobal("find_and_emit_conversation", find_and_emit_conversation);
  }
  defineGlobal("own_fields", own_fields);

  function isThenable(v) {
    return v !== null && (typeof v === "object" || typeof v === "function") && typeof v.then === "function";
  }

  // Handlers are synchronous, but modern JS uses promises: the jobs a call queued run before
  // the call ends (`hostDrain`), so `.then` callbacks and `await`s on work that is already
  // done take effect in that call. A returned promise (an `async` handler) must be settled by
  // then: its rejection is the call's error, and a promise still pending is one too — there is
  // no later for it to settle in.
  function settle(result) {
    if (!isThenable(result)) {
      hostDrain();
      return;
    }
    let state = "pending";
    let reason;
    promiseThen(promiseResolve(PromiseCtor, result), () => { state = "fulfilled"; }, (e) => { state = "rejected"; reason = e; });
    hostDrain();
    if (state === "rejected") throw reason;
    if (state === "pending")
      throw new ErrorCtor("the handler returned a promise that was still pending when the call ended: " +
        "handlers are synchronous, and an async handler may await only work that is already done");
  }

  // The value a handler's result stands for: itself, or what its promise settled to by the
  // end of the call (after the queued jobs ran).
  function settledValue(result) {
    if (!isThenable(result)) {
      hostDrain();
      return result;
    }
    let state = "pending";
    let value;
    promiseThen(promiseResolve(PromiseCtor, result), (v) => { state = "fulfilled"; value = v; }, (e) => { state = "rejected"; value = e; });
    hostDrain();
    if (state === "rejected") throw value;
    if (state === "pending")
      throw new ErrorCtor("the handler returned a promise that was still pending when the call ended: " +
        "handlers are synchronous, and an async handler may await only work that is already done");
    return value;
  }

  // A route handler's answer as the host takes it: {status, headers, json | body}. A handler
  // that keeps answers it already wrote out (a page of a list, until the feed says it
  // changed) may give `json_text`, JSON as text, sent as it is (the host checks it is JSON).
  function responseText(r) {
    if (r === undefined || r === null || typeof r !== "object" || isArray(r))
      throw new TypeError("a route handler returns an object: {status, json | body, headers}");
    const status = r.status === undefined ? 200 : r.status;
    if (typeof status !== "number" || !(status >= 200 && status <= 599) || status % 1 !== 0)
      throw new TypeError("status must be a whole number from 200 to 599, not " + formatArg(status));
    const out = { status };
    const given = (r.body !== undefined) + (r.json !== undefined) + (r.json_text !== undefined);
    if (given > 1) throw new TypeError("a response has one of json, json_text or body");
    if (r.json_text !== undefined && typeof r.json_text !== "string") throw new TypeError("json_text must be a string of JSON");
    if (r.body !== undefined) {
      if (typeof r.body !== "string") throw new TypeError("body must be a string (json for a value)");
      out.body = r.body;
    } else if (r.json !== undefined) {
      out.json = r.json;
    }
    if (r.headers !== undefined) {
      if (r.headers === null || typeof r.headers !== "object" || isArray(r.headers)) throw new TypeError("headers must be an object of strings");
      const headers = []; // [name, value] pairs, for the host
      for (const name of Object.keys(r.headers)) {
        if (typeof r.headers[name] !== "string") throw new TypeError("header " + name + " must be a string");
        push(headers, [name, r.headers[name]]);
      }
      out.headers = headers;
    }
    let text;
    try {
      text = stringify(out);
    } catch (e) {
      throw new TypeError("the response cannot be written as JSON: " + StringCtor(e && e.message !== undefined ? e.message : e));
    }
    if (r.json_text !== undefined) text = strSlice(text, 0, text.length - 1) + ',"json":' + r.json_text + "}";
    return text;
  }

  // Every call starts with what the store answered for the last one forgotten, and a batch's
  // declared reads — `reads(doc)` of each document, and with `reads_attachments` the
  // documents' attachments — fetched in one request (`read_ahead`): the handlers' own reads
  // of them are then answered from memory. A `reads` that throws or gives something else
  // only loses its read ahead: the handler reads what it needs, and reports its own errors.
  function readAhead(docs) {
    if (nativeReadAhead === undefined) return;
    const pairs = [];
    const finds = [];
    const withAttachments = [];
    const d = docs !== null ? declaration : null;
    if (d !== null && d.reads !== undefined) {
      hostBegin();
      for (let i = 0; i < docs.length; i++) {
        try {
          const wanted = d.reads(docs[i]);
          if (!isArray(wanted)) continue;
          for (let j = 0; j < wanted.length; j++) {
            const p = wanted[j];
            if (isArray(p) && p.length === 2 && typeof p[1] === "string") push(pairs, [p[0], p[1]]);
            else if (p !== null && typeof p === "object" && typeof p.schema === "string" && typeof p.field === "string" && p.value !== undefined)
              push(finds, { schema: p.schema, field: p.field, value: p.value });
          }
        } catch (_) {
          // See above: the handler's own reads will say what is wrong.
        }
      }
    }
    if (d !== null && d.reads_attachments) {
      for (let i = 0; i < docs.length; i++) if (typeof docs[i]._id === "string") push(withAttachments, docs[i]._id);
    }
    try {
      nativeReadAhead({ docs: pairs, finds, attachments: withAttachments, reset: true });
    } catch (_) {
      // A store that fails now fails the handlers' own reads, which report it as before.
    }
  }

  // Runs `fn(arg)` as one handler call and returns the outcome as JSON text:
  // {"ok":[items…],"later":[…]} or {"error":{…}}.
  // A schema violation fails the call even when the handler caught the error emit_schema threw.
  function runOne(fn, arg) {
    emitted = [];
    laterValues = [];
    violation = null;
    hostBegin();
    try {
      settle(fn(arg));
      if (violation !== null) return failure(violation);
      let text = '{"ok":[' + join(emitted, ",") + "]";
      if (laterValues.length > 0) text += ',"later":' + stringify(laterValues);
      return text + "}";
    } catch (e) {
      return failure(violation !== null ? violation : e);
    } finally {
      emitted = null;
      laterValues = null;
      violation = null;
    }
  }

  function failure(e) {
    try {
      const described = describeError(e);
      if (e === violation) described.kind = "schema";
      return stringify({ error: described });
    } catch (_) {
      return '{"error":{"name":"Error","message":"the handler threw a value that cannot be described"}}';
    }
  }

  // A definition file's handler: upgrades one document's fields, {fields, from}, to the
  // definition's version (its `upgrade(fields, fromVersion)`, then the definition's checks).
  function upgradeOne(doc) {
    const def = schemaDecl;
    let fields = doc.fields;
    if (def.upgrade !== undefined) {
      const answer = def.upgrade(fields, doc.from);
      if (answer !== undefined) fields = answer;
    }
    if (!isPlainObject(fields)) throw new TypeError("upgrade() must return the document's fields, an object");
    const problem = checkItems(def, fields);
    if (problem !== null)
      throw new TypeError("upgrade() to version " + def.version + " gave fields that break the definition: " +
        (problem.field !== null ? "field " + problem.field + ": " : "") + problem.reason);
    push(emitted, stringify({ schema_id: def.id, items: fields, version: def.version }));
  }

  return {
    // JSON text describing the declared extension (or the routes of an API file), or throws
    // naming file:line.
    describe() {
      loading = false;
      if (declarationError !== null) throw new ErrorCtor(declarationError);
      if (declaration !== null && routes.length > 0)
        throw new ErrorCtor(routes[0].site + ": a file declares an extension or routes, not both");
      if (declaration === null && routes.length > 0) {
        const declared = [];
        for (let i = 0; i < routes.length; i++) {
          const r = routes[i];
          push(declared, { method: r.method, path: r.path, site: r.site, time_limit_ms: r.time_limit_ms });
        }
        return stringify({
          id: "api:" + siteFile(routes[0].site), source_schemas: [], category: "provider", confidence: 0,
          time_limit_ms: null, site: routes[0].site, libs: slice(libsLoaded), routes: declared,
        });
      }
      if (schemaDecl !== null && (declaration !== null || routes.length > 0))
        throw new ErrorCtor(schemaDecl.site + ": a file declares a schema, an extension or routes, only one of them");
      if (schemaDecl !== null) {
        const d = schemaDecl;
        return stringify({
          id: "schema:" + d.id, source_schemas: [], category: "provider", confidence: 0, time_limit_ms: null,
          site: d.site, libs: slice(libsLoaded),
          schema: { id: d.id, version: d.version, fields: d.types, expandable: d.expandable, open: d.open,
                    has_validate: d.validate !== undefined, has_upgrade: d.upgrade !== undefined },
        });
      }
      if (declaration === null) throw new ErrorCtor("the file never calls extension({...}), route({...}) or schema({...})");
      const d = declaration;
      return stringify({
        id: d.id, source_schemas: d.source_schemas, source_fields: d.source_fields, category: d.category,
        confidence: d.confidence, time_limit_ms: d.time_limit_ms,
        uses_dependencies: d.uses_dependencies, indexes: d.indexes, later_in_parts: d.later_in_parts,
        later_shared: d.later_shared, later_deletions: d.later_deletions,
        has_filter: d.filter !== undefined, has_later_handler: d.later_handler !== undefined,
        site: d.site, libs: slice(libsLoaded),
      });
    },
    // Runs the handler over an array of documents; returns the JSON text of an array with one
    // outcome per document. If the host stops the call (time limit), `partial()` gives the
    // outcomes of the documents that finished.
    run(docs) {
      partial = [];
      const handler = declaration !== null ? declaration.handler : upgradeOne;
      readAhead(docs);
      for (let i = 0; i < docs.length; i++) push(partial, runOne(handler, docs[i]));
      const text = "[" + join(partial, ",") + "]";
      partial = null;
      return text;
    },
    // Runs the later_handler with the values collected by process_later.
    // A "shared" extension's call is one of several, each given every value: the first is
    // the pipeline's {rd_part: [index, count]}, handed to the handler as its share.
    runLater(values) {
      readAhead(null);
      if (declaration.later_shared && values.length && values[0] !== null && typeof values[0] === "object" &&
          isArray(values[0].rd_part)) {
        const part = { index: values[0].rd_part[0], count: values[0].rd_part[1] };
        return "[" + runOne((rest) => declaration.later_handler(rest, part), values.slice(1)) + "]";
      }
      return "[" + runOne(declaration.later_handler, values) + "]";
    },
    // Asks the optional filter about each [id, rev, schema_id]; JSON array of booleans or errors.
    filter(keys) {
      readAhead(null);
      const out = [];
      for (let i = 0; i < keys.length; i++) {
        hostBegin();
        try {
          const answer = declaration.filter(keys[i][0], keys[i][1], keys[i][2]);
          if (isThenable(answer)) throw new ErrorCtor("filter returned a promise: filters are synchronous and answer true or false");
          hostDrain();
          push(out, !!answer);
        } catch (e) {
          push(out, { error: describeError(e) });
        }
      }
      return stringify(out);
    },
    // Runs route `call.route`'s handler on `call.req`; JSON text {"ok": response} or {"error": {…}}.
    request(call) {
      readAhead(null);
      const r = routes[call.route];
      hostBegin();
      let result;
      try {
        result = settledValue(r.handler(call.req));
      } catch (e) {
        try {
          return stringify({ error: describeError(e) });
        } catch (_) {
          return '{"error":{"name":"Error","message":"the handler threw a value that cannot be described"}}';
        }
      }
      try {
        return '{"ok":' + responseText(result) + "}";
      } catch (e) {
        // A bad answer is the route's: placed at its declaration.
        const file = siteFile(r.site);
        const line = NumberCtor(strSlice(r.site, file.length + 1, strLastIndexOf(r.site, ":")));
        return stringify({ error: { name: "TypeError", message: StringCtor(e.message), file, line, column: null, stack: null } });
      }
    },
    partial() {
      const done = partial === null ? [] : partial;
      partial = null;
      return "[" + join(done, ",") + "]";
    },
  };
})((function () {
  const h = globalThis.__rd_host;
  delete globalThis.__rd_host;
  return h;
})());
