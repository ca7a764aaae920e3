//! Condition evaluation over a contact's state (pure, allocation-free).

use super::state::{ContactState, Enrollment};
use crate::time::Ts;
use crate::value::Map;
use crate::workflow::{Cond, Registry};

pub struct Scope<'a> {
    pub st: &'a ContactState,
    pub reg: &'a Registry,
    pub now: Ts,
    /// Event properties `prop:` reads: the incoming event for filters, the enrollment's
    /// triggering event inside a workflow.
    pub props: &'a Map,
    pub enrollment: Option<&'a Enrollment>,
}

pub fn eval(c: &Cond, s: &Scope) -> bool {
    match c {
        Cond::All(cs) => cs.iter().all(|c| eval(c, s)),
        Cond::Any(cs) => cs.iter().any(|c| eval(c, s)),
        Cond::Not(c) => !eval(c, s),
        Cond::Trait(name, op) => op.test(s.st.traits.get_path(name)),
        Cond::Prop(name, op) => op.test(s.props.get(name)),
        Cond::Count {
            counter,
            within_days,
            op,
        } => op.test_count(s.st.count(*counter, s.now, *within_days)),
        Cond::Tag(t) => s.st.tags.contains(t),
        Cond::InList(l) => s.st.lists.contains(l) || s.reg.lists.get(l).is_some_and(|def| eval(def, s)),
        Cond::Opened(step) => s
            .enrollment
            .is_some_and(|e| e.sends.iter().any(|r| r.step == *step && r.opened)),
        Cond::Clicked(step) => s
            .enrollment
            .is_some_and(|e| e.sends.iter().any(|r| r.step == *step && r.clicked)),
    }
}

pub fn all(cs: &[Cond], s: &Scope) -> bool {
    cs.iter().all(|c| eval(c, s))
}
