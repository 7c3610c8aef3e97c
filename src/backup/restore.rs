//! Placing a backup in an instance's data directory before its start.
