//! The bundled definitions (the repository's `schemas/`), built into the binary so every
//! schema Raindrop writes has its definition wherever the binary runs.

use crate::js::extension::ExtensionSource;

/// `(file name, source)` of each bundled definition; a test keeps it equal to `schemas/*.js`.
const FILES: &[(&str, &str)] = &[
    ("rd.attach.file.js", include_str!("../../schemas/rd.attach.file.js")),
    ("rd.attach.link.js", include_str!("../../schemas/rd.attach.link.js")),
    ("rd.contact.js", include_str!("../../schemas/rd.contact.js")),
    ("rd.conv.summary.js", include_str!("../../schemas/rd.conv.summary.js")),
    ("rd.core.error.js", include_str!("../../schemas/rd.core.error.js")),
    ("rd.grouping.info.js", include_str!("../../schemas/rd.grouping.info.js")),
    ("rd.grouping.summary.js", include_str!("../../schemas/rd.grouping.summary.js")),
    ("rd.identity.contacts.js", include_str!("../../schemas/rd.identity.contacts.js")),
    ("rd.identity.exists.js", include_str!("../../schemas/rd.identity.exists.js")),
    ("rd.identity.sender-flags.js", include_str!("../../schemas/rd.identity.sender-flags.js")),
    ("rd.imap.mailbox-cache.js", include_str!("../../schemas/rd.imap.mailbox-cache.js")),
    ("rd.mailing-list.js", include_str!("../../schemas/rd.mailing-list.js")),
    ("rd.msg.attachment-summary.js", include_str!("../../schemas/rd.msg.attachment-summary.js")),
    ("rd.msg.body.js", include_str!("../../schemas/rd.msg.body.js")),
    ("rd.msg.body.quoted.js", include_str!("../../schemas/rd.msg.body.quoted.js")),
    ("rd.msg.conversation.js", include_str!("../../schemas/rd.msg.conversation.js")),
    ("rd.msg.email.js", include_str!("../../schemas/rd.msg.email.js")),
    ("rd.msg.email.mailing-list.js", include_str!("../../schemas/rd.msg.email.mailing-list.js")),
    ("rd.msg.grouping-tag.js", include_str!("../../schemas/rd.msg.grouping-tag.js")),
    ("rd.msg.imap-locations.js", include_str!("../../schemas/rd.msg.imap-locations.js")),
    ("rd.msg.maildir-location.js", include_str!("../../schemas/rd.msg.maildir-location.js")),
    ("rd.msg.outgoing.simple.js", include_str!("../../schemas/rd.msg.outgoing.simple.js")),
    ("rd.msg.rfc822.js", include_str!("../../schemas/rd.msg.rfc822.js")),
    ("rd.msg.seen.js", include_str!("../../schemas/rd.msg.seen.js")),
    ("rd.schema.definition.js", include_str!("../../schemas/rd.schema.definition.js")),
];

pub(super) fn sources() -> Vec<ExtensionSource> {
    FILES.iter().map(|(name, source)| ExtensionSource::from_string(&format!("schemas/{name}"), source)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_file_of_the_schemas_folder_is_bundled() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".js"))
            .collect();
        on_disk.sort();
        let mut bundled: Vec<String> = super::FILES.iter().map(|(n, _)| n.to_string()).collect();
        bundled.sort();
        assert_eq!(bundled, on_disk, "src/schema/bundled.rs must list every schemas/*.js");
        for (name, source) in super::FILES {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), *source, "{name}");
        }
    }
}
