//! Where messages come from. `file` reads JSON Lines from files or stdin.
//! Sources only produce [`crate::pipeline::Message`]s; they never interpret
//! or write.

pub mod file;
pub mod kafka;
