//! The events each node's status lists, recorded from its step changes. Pure.

use crate::journal::{Cause, Event, EventStatus, Journal, Ms, Step};

/// Closes and opens each node's events as its step changed.
pub(crate) fn record_events(before: &Journal, after: &mut Journal, now: Ms) {
    for (id, n) in after.nodes.iter_mut() {
        let Some(old) = before.nodes.get(id) else { continue };
        if old.step == n.step {
            continue;
        }
        if let Some(open) = n.events.last_mut().filter(|e| e.end.is_none()) {
            let stopped = n.cause == Some(Cause::Stopped);
            // Failed and queued again (a group rollback) in one decision.
            let requeued = n.step == Step::Waiting && !n.note.is_empty() && !stopped;
            let retried = old.step == Step::Rejoining && n.step == Step::Applying || requeued;
            open.status = match n.step {
                Step::Failed if stopped => EventStatus::Stopped,
                Step::Failed => EventStatus::Failed,
                _ if retried => EventStatus::Failed,
                _ if stopped => EventStatus::Stopped,
                _ => EventStatus::Done,
            };
            open.end = Some(now);
            open.message =
                if n.step == Step::Failed || stopped || retried { n.note.clone() } else { describe(old.step, n.step) };
        }
        if let Some(task) = n.step.running_event()
            && n.events.last().is_none_or(|e| e.end.is_some() || e.task != task)
        {
            n.events.push(Event { task, status: EventStatus::Running, start: now, end: None, message: String::new() });
        }
    }
}

/// What a finished step did, for its event.
fn describe(from: Step, to: Step) -> String {
    match (from, to) {
        (Step::Staging, _) => "staged".into(),
        (Step::Draining | Step::Stopping, _) => "its virtual services moved to the other SEs".into(),
        (Step::Applying, Step::Rejoining) => "installed; rebooting into it".into(),
        (Step::Applying | Step::Rejoining, _) => "rejoined on the new version".into(),
        (Step::Committing, _) => "committed".into(),
        (Step::Restoring | Step::Releasing, _) => "serving its virtual services again".into(),
        (Step::Gating, _) => "its health gates passed".into(),
        (Step::RollingBack | Step::RollbackRejoining, _) => "back on the old version".into(),
        (a, b) => format!("{a:?} → {b:?}").to_lowercase(),
    }
}
