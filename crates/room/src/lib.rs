//! The XEP-0045 room of dmuc as a pure state machine: events in, actions out.
//!
//! Nothing here does I/O, reads a clock or draws a random number, so the
//! master (and later the peerhost's slaves) can drive the same logic, and
//! tests assert on exactly what a room decides to do.
//!
//! # Layout
//! - [`ids`]: newtypes that validate once (`Nick`, `OccupantId`, `Seq`, `StanzaId`, `Timestamp`).
//! - [`affiliation`]: `Affiliation` and `Role`.
//! - [`config`]: `RoomConfig` (with the room's `SplitPolicy`) and its `muc#roomconfig` form.
//! - [`form`]: data forms as plain data.
//! - [`history`]: room messages, subject, discussion history and its limits.
//! - [`event`]: [`Input`] (parsed stanzas) and [`Action`] (stanzas to send, changes to persist).
//! - [`room`]: [`Room::handle`], the state machine itself, and its snapshots.
//! - [`replica`]: slaves applying the master's numbered inputs to a replica,
//!   and the split of deliveries between master and slaves.
//! - [`split`]: a slave cut off from its master serves its own domain alone
//!   under the room's [`SplitPolicy`], logs what happens, and hands the
//!   log to the master on heal.
//! - [`merge`]: the master's room takes a healed split's inputs back, each
//!   once and in order, keeping their stanza ids and telling only those
//!   who did not see them.
//! - `testing` (feature `testing`): proptest strategies for inputs, shared
//!   with the crates that carry rooms over a wire.
//!
//! ```text
//!   stanza ──edge──▶ Input ──▶ Room::handle(input, now) ──▶ Vec<Action>
//!                                                    ├─ Send { to, Outgoing } ──edge──▶ stanza
//!                                                    ├─ Persist(..)          ──▶ store (group commit)
//!                                                    ├─ Merged { .. }        ──▶ confirm a merge to its peerhost
//!                                                    └─ Close
//! ```
//! The runtime must keep `Send`s behind the `Persist`s emitted before them.

pub mod affiliation;
pub mod config;
pub mod error;
pub mod event;
pub mod form;
pub mod history;
pub mod ids;
pub mod merge;
pub mod replica;
pub mod room;
pub mod split;
#[cfg(feature = "testing")]
pub mod testing;

pub use affiliation::{Affiliation, Role};
pub use config::{AllowPm, ConfigBounds, RoomConfig, SplitPolicy, Whois};
pub use error::{Condition, Error, ErrorType};
pub use event::{Action, Input, Outgoing, Persist};
pub use history::{HistoryRequest, Payload, RoomMessage, Subject};
pub use ids::{Nick, OccupantId, Seq, StanzaId, Timestamp};
pub use merge::{Merge, SplitProgress};
pub use room::{OccupantSnapshot, RateLimit, Room, RoomSettings, RoomSnapshot, StoredRoom};
pub use split::{Healed, Split, SplitEvent, SplitStart};
