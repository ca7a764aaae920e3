//! Where decided sends go: rendered into RFC 5322 messages (signed links, tracking, DKIM) and
//! handed by the mailer to a transport: `.eml` files or a pool of SMTP connection actors; the
//! calls of webhook steps go out of the same outbox through the webhook transport.

pub mod compose;
pub mod eml;
pub mod invite;
pub mod mailer;
pub mod smtp;
pub mod tracking;
pub mod transport;
pub mod webhook;
