//! What the state machine reacts to.

use crate::event::Event;
use crate::value::Map;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    Event(Event),
    /// A durable timer came due; the input time is its due time.
    Timer {
        id: u64,
    },
    /// What happened to a sent email (from the mailer, tracking links or the ESP).
    Feedback(Feedback),
    /// Enrollment through the API.
    Enroll {
        workflow: String,
        properties: Map,
    },
    /// The contact is erased (GDPR): every enrollment ends (counted as exited) and every
    /// timer is cancelled; the runtime then deletes the state.
    Erase,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// The `Message-ID` (or bare send id) the feedback is about.
    pub message_id: String,
    pub kind: FeedbackKind,
    /// Workflow scope of an unsubscribe; `None` unsubscribes from all marketing.
    pub workflow: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedbackKind {
    Delivered,
    Deferred,
    SoftBounced,
    Bounced,
    Opened,
    Clicked,
    Unsubscribed,
    Complained,
}

impl FeedbackKind {
    /// The tracked event this feedback becomes in the contact's stream, so workflows can wait
    /// for it, branch on it or count it like any other event.
    pub fn event_name(self) -> &'static str {
        match self {
            FeedbackKind::Delivered => "Email Delivered",
            FeedbackKind::Deferred => "Email Deferred",
            FeedbackKind::SoftBounced => "Email Soft Bounced",
            FeedbackKind::Bounced => "Email Bounced",
            FeedbackKind::Opened => "Email Opened",
            FeedbackKind::Clicked => "Email Clicked",
            FeedbackKind::Unsubscribed => "Unsubscribed",
            FeedbackKind::Complained => "Email Complained",
        }
    }
}
