#!/usr/bin/env python3
"""Turns the original Raindrop test mail into `rd.msg.email`-shaped JSON lines for
fixtures/sample-emails.jsonl (raw schema items for `raindrop add-schemas`): the sample input of `scripts/run.sh` until the mail issue brings
Raindrop's own MIME import. Run from the repository root with the shared corpus beside it."""
import email, email.policy, json, pathlib, sys

corpus = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/corpus/raindrop")
out = []
for path in sorted(corpus.glob("*/*.rfc822.txt")):
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    headers = {}
    for name, value in msg.items():
        headers.setdefault(name.lower(), []).append(str(value))
    body_part = msg.get_body(preferencelist=("plain",))
    try:
        body = body_part.get_content() if body_part is not None else ""
    except Exception:
        body = ""
    msgid = (msg.get("message-id") or path.name).strip().strip("<>")
    out.append({
        "rd_key": ["email", msgid],
        "rd_schema_id": "rd.msg.email",
        "headers": headers,
        "body": body,
        "source_file": path.parent.name + "/" + path.name,
    })
pathlib.Path("fixtures/sample-emails.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in out))
print(f"{len(out)} documents")
