//! SQLite storage (in progress)
