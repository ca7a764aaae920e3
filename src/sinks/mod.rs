//! Where decided sends go: rendered into RFC 5322 messages and handed to a transport.

pub mod eml;
pub mod mailer;
pub mod transport;
