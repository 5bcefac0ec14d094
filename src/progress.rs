//! How long jobs report progress without knowing who watches: the CLI hands in an
//! indicatif bar, tests and nested jobs hand in [`Hidden`]. Library code depends on this
//! trait only, never on a terminal library.

/// A sink for units of work done. Every method has a no-op default.
pub trait Progress: Sync {
    /// The total number of units, when it is known up front.
    fn set_length(&self, _len: u64) {}
    /// More work discovered on the way (e.g. one more site's grid).
    fn inc_length(&self, _delta: u64) {}
    /// Units finished.
    fn inc(&self, _delta: u64) {}
    /// Units finished so far (a resumed job starts part way).
    fn set_position(&self, _pos: u64) {}
    /// What is being worked on now, in a few words.
    fn set_message(&self, _what: &str) {}
}

/// Reports to no one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hidden;

impl Progress for Hidden {}
