//! A value that SIGHUP may replace while tasks use it (the API token, the controller
//! client). Readers take a clone of the current value, so a call under way finishes
//! with the one it started with.

use std::sync::{Arc, RwLock};

/// The current value, shared; cloning the slot shares it.
#[derive(Debug, Default)]
pub struct Slot<T>(Arc<RwLock<T>>);

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Slot<T> {
        Slot(self.0.clone())
    }
}

impl<T: Clone> Slot<T> {
    pub fn new(value: T) -> Slot<T> {
        Slot(Arc::new(RwLock::new(value)))
    }

    /// The value in use now. A writer that panicked cannot have left half a value:
    /// replacing is one assignment.
    pub fn get(&self) -> T {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_value_is_seen_through_every_clone() {
        let slot = Slot::new(Arc::new(1));
        let other = slot.clone();
        let before = slot.get();
        other.replace(Arc::new(2));
        assert_eq!(*slot.get(), 2);
        assert_eq!(*before, 1, "a value taken earlier stays as it was");
    }
}
