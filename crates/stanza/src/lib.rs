//! The XML edge of dmuc: the one place where stanzas become room inputs
//! ([`inbound`]) and room outputs become stanzas ([`outbound`]). The master
//! and the peerhost's slaves share it, so a room looks the same to a client
//! whichever of them delivers it.
//!
//! # Layout
//! - [`inbound`]: classify a raw stanza from the component link: a room
//!   [`Input`](dmuc_room::Input), a request to the service itself, or an
//!   error reply; forged ids stripped, sizes checked.
//! - [`outbound`]: build the stanza for a room's [`Outgoing`](dmuc_room::Outgoing),
//!   once per action, then stamp each recipient; disco and error helpers.

pub mod inbound;
pub mod outbound;
