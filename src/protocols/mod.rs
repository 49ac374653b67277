//! Protocols bring outside data in as raw schema documents (today: IMAP mail). They know the
//! [`Store`](crate::store::Store) trait and the document model, never the JS engine.

pub mod imap;
