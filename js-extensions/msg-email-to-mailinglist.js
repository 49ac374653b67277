// rd.msg.email → rd.msg.email.mailing-list (the list a message came through) and the list's own
// rd.mailing-list document, with the original's unsubscribe state machine for Mailman and
// Google Groups (v1 and v2):
//
//   subscribed ──(a UI sets)──▶ unsubscribe-pending ──(confirmation request: we reply)──▶
//   unsubscribe-confirmed ──(the list says "you are unsubscribed")──▶ unsubscribed
//
// A message only moves the state if it is newer than the last message or change that did
// (`changed_timestamp`, ties broken by message key in `changed_key`), so mail that arrives out
// of order — an old confirmation, an old post — changes nothing, and the state is that of the
// newest message whatever order they came in: a post newer than an unsubscription means the
// user is subscribed again. The list's addresses (List-Post, List-Unsubscribe …) are the newest
// post's, and its name (`info_timestamp`, `info_key`); `identity` the smallest of mine a post
// was sent to. (A date far in the future wins all the same: results must not depend on the
// day they are derived, so the clock is not consulted.)
// The list document is shared with the UI, so it is read and written whole (update_documents),
// as in the original; the confirming reply is an rd.msg.outgoing.simple on the request message.

function header(headers, name) {
  const v = headers[name];
  return v && v.length ? String(v[0]).trim() : null;
}

function address(headers, name) {
  const v = header(headers, name);
  const list = v ? raindrop.mail.addresses(v) : [];
  return list.length ? list[0] : null;
}

// `<mailto:x@y?subject=unsubscribe>, <https://…>` → {mailto: "x@y?subject=unsubscribe", http: "https://…"}
function urls(value) {
  const out = {};
  if (!value) return out;
  for (const m of value.matchAll(/<([^<>]+)>/g)) {
    const url = m[1].trim();
    if (/^mailto:/i.test(url)) out.mailto = url.slice(7);
    else if (/^https?:/i.test(url)) out.http = url;
  }
  return out;
}

// What the message is to its list: {id, name, kind, reply_to}. kind: message | confirm-request |
// unsubscribed | admin.
function classify(headers) {
  const subject = header(headers, "subject") || "";
  const from = address(headers, "from");
  const fromAddr = from ? from.address.toLowerCase() : "";
  const loop = (header(headers, "x-google-loop") || "").toLowerCase();
  const gg = /^([^+@]+)(?:\+([^@]+))?@googlegroups\.com$/.exec(fromAddr);
  // Google Groups v1 administrative mail comes from noreply@googlegroups.com.
  if (loop === "unsub_requested" || loop === "unsub_success") {
    const m = /(?:from|to)\s+(\S+)\s*$/i.exec(subject);
    if (!m) return null;
    const replyTo = address(headers, "reply-to");
    return { id: m[1].toLowerCase() + ".googlegroups.com", name: m[1], reply_to: replyTo && replyTo.address,
             kind: loop === "unsub_requested" ? "confirm-request" : "unsubscribed" };
  }
  // Google Groups v2: <list>+unsubconfirm@ asks, <list>+noreply@ tells.
  if (gg && gg[2]) {
    const base = { id: gg[1] + ".googlegroups.com", name: gg[1], reply_to: fromAddr };
    if (gg[2].startsWith("unsubconfirm")) return { ...base, kind: "confirm-request" };
    if (gg[2] === "noreply" && /unsubscription .* successful/i.test(subject)) return { ...base, kind: "unsubscribed" };
    return { ...base, kind: "admin" };
  }
  const listId = header(headers, "list-id");
  if (listId) {
    const m = /<([^<>]+)>/.exec(listId);
    let id = m ? m[1].trim().toLowerCase() : null;
    let name = m ? listId.slice(0, m.index).trim().replace(/^"(.*)"$/, "$1") : listId;
    if (!id) {
      // Mailman's notices to a list's owner carry a List-Id without an id: the list is the
      // one whose -owner/-bounces/-request address is involved.
      const addrs = [address(headers, "to"), address(headers, "from")].filter(Boolean).map((a) => a.address.toLowerCase());
      const owner = addrs.map((a) => /^(.+?)-(?:owner|bounces|request)@(.+)$/.exec(a)).find((x) => x && x[1] !== "mailman");
      if (!owner) return null;
      id = owner[1] + "." + owner[2];
      name = owner[1];
    }
    name = name || id.split(".")[0];
    const admin = /^yes$/i.test(header(headers, "x-list-administrivia") || "");
    let kind = "message";
    if (admin) {
      if (/-confirm(\+[^@]*)?@/.test(fromAddr) || /confirmation is required to leave/i.test(subject)) kind = "confirm-request";
      else if (/you have been unsubscribed/i.test(subject)) kind = "unsubscribed";
      else kind = "admin";
    }
    const replyTo = address(headers, "reply-to");
    return { id, name, kind, reply_to: (replyTo && replyTo.address) || fromAddr };
  }
  // Google Groups v1 posts carry no List-Id, only the group's address.
  const to = address(headers, "to");
  const toAddr = to ? to.address.toLowerCase() : "";
  const post = /^([^+@]+)@googlegroups\.com$/.exec(toAddr);
  if (post && loop === "groups") return { id: post[1] + ".googlegroups.com", name: post[1], kind: "message" };
  return null;
}

// The reply that confirms an unsubscription: an empty message to the address that asked.
function sendConfirmation(doc, headers, reply) {
  const me = address(headers, "to");
  emit_schema("rd.msg.outgoing.simple", {
    from: me ? ["email", me.address.toLowerCase()] : null,
    from_display: me ? me.name || me.address : null,
    to: [["email", reply.toLowerCase()]],
    to_display: [reply],
    subject: "Re: " + (header(headers, "subject") || ""),
    body: "",
    in_reply_to: doc.rd_key,
    outgoing_state: "outgoing",
  });
}

extension({
  id: "rd.ext.core.msg-email-to-mailinglist",
  source_schemas: ["rd.msg.email"],
  source_fields: ["headers", "timestamp"],
  // The confirming reply is kept even when a re-run no longer sends it.
  category: "smart",
  // A batch's lists in one read.
  reads(doc) {
    const list = classify(doc.headers || {});
    return list ? [[["mailing-list", list.id], "rd.mailing-list"]] : [];
  },
  handler(doc) {
    const headers = doc.headers || {};
    const list = classify(headers);
    if (!list) return;
    emit_schema("rd.msg.email.mailing-list", { list_id: list.id });
    const ts = typeof doc.timestamp === "number" ? doc.timestamp : 0;
    const msgKey = JSON.stringify(doc.rd_key);
    const key = ["mailing-list", list.id];
    // (ts, msgKey) after (at, atKey): later, or as late and later by key.
    const after = (at, atKey) => at === undefined || ts > at || (ts === at && msgKey > (atKey || ""));
    // Every newer message of a list now writes its document, so handlers of one list's mail on
    // two threads meet often: a conflict is read again and retried, up to 25 times.
    for (let attempt = 0; attempt < 25; attempt++) {
      const current = open_schemas([[key, "rd.mailing-list"]])[0];
      // A new list starts subscribed, moved by no message yet (0, no key): the message that
      // makes it moves it only as it would move one already there, so an administrative
      // notice read before the list's posts does not stand in for them.
      const next = current ? JSON.parse(JSON.stringify(current)) : {
        rd_key: key, rd_schema_id: "rd.mailing-list", id: list.id, name: list.name, status: "subscribed", changed_timestamp: 0,
      };
      const newer = !current || after(next.changed_timestamp, next.changed_key);
      const moved = () => {
        next.changed_timestamp = ts;
        next.changed_key = msgKey;
      };
      let reply = null;
      if (list.kind === "message") {
        if (!current || after(next.info_timestamp, next.info_key)) {
          for (const field of ["post", "archive", "help", "subscribe", "unsubscribe"]) {
            const v = urls(header(headers, "list-" + field));
            if (Object.keys(v).length) next[field] = v;
            else delete next[field];
          }
          next.name = list.name;
          next.info_timestamp = ts;
          next.info_key = msgKey;
        }
        // Which of my identities the list writes to, when it says.
        const mine = get_my_identities();
        const to = [];
        for (const name of ["to", "cc", "delivered-to"]) {
          for (const v of headers[name] || []) to.push(...raindrop.mail.addresses(String(v)));
        }
        const me = to.map((a) => ["email", a.address.toLowerCase()]).find((id) => mine.some((m) => m[0] === id[0] && m[1] === id[1]));
        if (me && (!next.identity || JSON.stringify(me) < JSON.stringify(next.identity))) next.identity = me;
        if (newer) {
          if (next.status === "unsubscribed") next.status = "subscribed";
          moved();
        }
      } else if (list.kind === "confirm-request") {
        if (newer && next.status === "unsubscribe-pending") {
          next.status = "unsubscribe-confirmed";
          moved();
          reply = list.reply_to;
        }
      } else if (list.kind === "unsubscribed") {
        if (newer) {
          next.status = "unsubscribed";
          moved();
        }
      }
      const unchanged = current && JSON.stringify(current) === JSON.stringify(next);
      const result = unchanged ? {} : update_documents([next])[0];
      if (!result.error) {
        if (reply) sendConfirmation(doc, headers, reply);
        return;
      }
      if (result.error !== "conflict") throw new Error("cannot write the list " + list.id + ": " + result.error);
    }
    throw new Error("the list " + list.id + " kept changing under us (25 conflicts)");
  },
});
