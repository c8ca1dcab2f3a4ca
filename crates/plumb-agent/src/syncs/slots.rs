//! A bound on the Syncs that hold a rendering at once, across all of the agent's reconciles.
//!
//! A rendering (every object of a revision as a parsed tree, several KiB each) is by far the
//! largest thing a Sync holds while it applies; the controller's concurrency alone would let
//! as many Syncs hold one at once as reconcile at once (10 with `--concurrency 10`). A Sync
//! takes a slot before it renders and gives it back once its writes are registered with the
//! drift watch, before any health wait: at most [`RENDER_SLOTS`] renderings exist at once,
//! whatever the concurrency (a deleted Sync's render of its last revision, which runs its
//! delete hooks, takes none). The API server sees no less work at once: each Sync applies
//! [`super::OBJECTS_PER_SYNC`] objects at once, the slots together fill the object budget.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Syncs that render, and apply what they rendered, at once (a revision that waits inside
/// the apply, for waves or hooks, gives its slot back once rendered: see
/// [`super::waits_inside`]).
pub const RENDER_SLOTS: usize = 2;

/// The slots, shared by every reconcile (cheap to clone).
#[derive(Clone)]
pub struct RenderSlots {
    semaphore: Arc<Semaphore>,
    /// (held now, most held at once so far).
    counts: Arc<Mutex<(usize, usize)>>,
    metrics: Metrics,
}

/// One Sync's slot: given back when dropped.
pub struct RenderSlot {
    _permit: OwnedSemaphorePermit,
    slots: RenderSlots,
}

impl RenderSlots {
    /// `slots` slots (at least one); their use is reported in `metrics`
    /// (`plumb_sync_renderings_held`, `plumb_sync_renderings_held_max`).
    pub fn new(slots: usize, metrics: Metrics) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(slots.max(1))),
            counts: Arc::default(),
            metrics,
        }
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> RenderSlot {
        let permit = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.count(|(now, max)| {
            *now += 1;
            *max = (*max).max(*now);
        });
        RenderSlot {
            _permit: permit,
            slots: self.clone(),
        }
    }

    /// The most slots held at once so far.
    pub fn max_held(&self) -> usize {
        self.lock().1
    }

    fn count(&self, change: impl FnOnce(&mut (usize, usize))) {
        let (now, max) = {
            let mut counts = self.lock();
            change(&mut counts);
            *counts
        };
        self.metrics.set_renderings_held(now, max);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        self.counts.lock().expect("render slot counts poisoned")
    }
}

impl Drop for RenderSlot {
    fn drop(&mut self) {
        self.slots.count(|(now, _)| *now -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_more_syncs_than_slots_hold_a_rendering_at_once() {
        let slots = RenderSlots::new(2, Metrics::new());
        let inside = Arc::new(Mutex::new((0usize, 0usize)));
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (slots, inside) = (slots.clone(), inside.clone());
                tokio::spawn(async move {
                    let _slot = slots.acquire().await;
                    {
                        let mut i = inside.lock().unwrap();
                        i.0 += 1;
                        i.1 = i.1.max(i.0);
                    }
                    for _ in 0..5 {
                        tokio::task::yield_now().await;
                    }
                    inside.lock().unwrap().0 -= 1;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let most_inside = inside.lock().unwrap().1;
        assert_eq!(most_inside, 2, "two at once, never more");
        assert_eq!(slots.max_held(), 2);
        assert_eq!(slots.lock().0, 0, "every slot was given back");
    }
}
