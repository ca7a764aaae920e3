//! What the state machine asks the world to do. The runtime carries these out; tests read them.

use super::state::SendId;
use crate::time::Ts;
use crate::value::{Map, Str};
use crate::workflow::{MailKind, StepIdx};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send(SendCommand),
    Webhook(WebhookCommand),
    ScheduleTimer { id: u64, due: Ts },
    CancelTimer { id: u64, due: Ts },
    Count(StepCount),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SendCommand {
    pub id: SendId,
    pub workflow: Arc<str>,
    pub version: u32,
    pub step: StepIdx,
    pub enrollment: u64,
    pub template: Str,
    pub to: Str,
    pub kind: MailKind,
    /// Snapshots taken when the send was decided: rendering later gives the same email.
    pub traits: Arc<Map>,
    pub event: Arc<Map>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookCommand {
    pub id: SendId,
    pub workflow: Arc<str>,
    pub version: u32,
    pub step: StepIdx,
    /// Snapshots taken when the call was decided: rendering later gives the same request.
    pub traits: Arc<Map>,
    pub event: Arc<Map>,
}

/// Per-step report counters, keyed by workflow version and step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCount {
    pub workflow: Arc<str>,
    pub version: u32,
    pub step: StepIdx,
    pub metric: Metric,
    pub delta: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Entered,
    /// A gauge: +1 when a wait starts at this step, -1 when it ends.
    Waiting,
    Exited,
    Converted,
    Holdout,
    Sent,
    Suppressed,
    Capped,
    NoAddress,
    Opened,
    Clicked,
}

impl Metric {
    pub const ALL: [Metric; 11] = [
        Metric::Entered,
        Metric::Waiting,
        Metric::Exited,
        Metric::Converted,
        Metric::Holdout,
        Metric::Sent,
        Metric::Suppressed,
        Metric::Capped,
        Metric::NoAddress,
        Metric::Opened,
        Metric::Clicked,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Entered => "entered",
            Metric::Waiting => "waiting",
            Metric::Exited => "exited",
            Metric::Converted => "converted",
            Metric::Holdout => "holdout",
            Metric::Sent => "sent",
            Metric::Suppressed => "suppressed",
            Metric::Capped => "capped",
            Metric::NoAddress => "no_address",
            Metric::Opened => "opened",
            Metric::Clicked => "clicked",
        }
    }
    pub fn code(self) -> u8 {
        Metric::ALL.iter().position(|m| *m == self).unwrap() as u8
    }
    pub fn from_code(c: u8) -> Option<Metric> {
        Metric::ALL.get(c as usize).copied()
    }
}
