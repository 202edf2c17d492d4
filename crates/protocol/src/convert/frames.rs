//! The validated contents of the frames that carry rooms: [`RoomEvent`]
//! (`pb::Event`) and [`SlaveStart`] (`pb::CreateSlave`). The other frames
//! carry only strings and numbers that the stream handlers check against
//! their own state (which rooms exist, which seq comes next), so they stay
//! `pb` types.

use dmuc_room::{Input, RoomSnapshot, Timestamp};
use jid::BareJid;

use super::{bare_jid, required};
use crate::error::Within;
use crate::{ProtocolError, pb};

/// One input a master's room handled, as a slave applies it:
/// `Replica::apply(event.seq, event.now, event.input)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomEvent {
    pub room: BareJid,
    /// The room's event number: consecutive per room, from 1.
    pub seq: u64,
    /// The time the master's room handled the input at.
    pub now: Timestamp,
    pub input: Input,
}

impl From<&RoomEvent> for pb::Event {
    fn from(e: &RoomEvent) -> Self {
        pb::Event {
            room: e.room.to_string(),
            seq: e.seq,
            now_ms: e.now.millis(),
            input: Some(pb::Input::from(&e.input)),
        }
    }
}

/// Errors name fields from `event`, e.g. `event.input.presence.nick`.
impl TryFrom<pb::Event> for RoomEvent {
    type Error = ProtocolError;

    fn try_from(e: pb::Event) -> Result<RoomEvent, ProtocolError> {
        event_from_pb(e).within("event")
    }
}

fn event_from_pb(e: pb::Event) -> Result<RoomEvent, ProtocolError> {
    let room = bare_jid(&e.room, "room")?;
    if e.seq == 0 {
        return Err(ProtocolError::invalid("seq", "must be at least 1"));
    }
    Ok(RoomEvent {
        room,
        seq: e.seq,
        now: Timestamp(e.now_ms),
        input: Input::try_from(required(e.input, "input")?)?,
    })
}

/// Where a slave starts: `Replica::new(start.snapshot, start.seq,
/// start.deliver_after, domain)`. The room is `snapshot.jid`.
#[derive(Clone, Debug, PartialEq)]
pub struct SlaveStart {
    pub snapshot: RoomSnapshot,
    /// The last event reflected in the snapshot (0: none).
    pub seq: u64,
    /// Events up to this one were delivered by the master: apply, do not deliver.
    pub deliver_after: u64,
}

impl From<&SlaveStart> for pb::CreateSlave {
    fn from(s: &SlaveStart) -> Self {
        pb::CreateSlave {
            room: s.snapshot.jid.to_string(),
            snapshot: Some(pb::RoomSnapshot::from(&s.snapshot)),
            seq: s.seq,
            deliver_after: s.deliver_after,
        }
    }
}

/// Errors name fields from `create`, e.g. `create.snapshot.occupants[0].nick`.
impl TryFrom<pb::CreateSlave> for SlaveStart {
    type Error = ProtocolError;

    fn try_from(c: pb::CreateSlave) -> Result<SlaveStart, ProtocolError> {
        slave_start_from_pb(c).within("create")
    }
}

fn slave_start_from_pb(c: pb::CreateSlave) -> Result<SlaveStart, ProtocolError> {
    let room = bare_jid(&c.room, "room")?;
    let snapshot = RoomSnapshot::try_from(required(c.snapshot, "snapshot")?)?;
    // The room is named twice so that a peer can route the frame without
    // decoding the snapshot; the two must agree.
    if snapshot.jid != room {
        return Err(ProtocolError::invalid("room", "differs from snapshot.jid"));
    }
    Ok(SlaveStart {
        snapshot,
        seq: c.seq,
        deliver_after: c.deliver_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> pb::Event {
        pb::Event {
            room: "r@conference.a.test".into(),
            seq: 1,
            now_ms: 1000,
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Shutdown(pb::Shutdown {})),
            }),
        }
    }

    #[test]
    fn event_paths_include_the_input() {
        let e = RoomEvent::try_from(event()).unwrap();
        assert_eq!(e.input, Input::Shutdown);
        assert_eq!(e.now, Timestamp(1000));

        let bad = |edit: fn(&mut pb::Event)| {
            let mut e = event();
            edit(&mut e);
            RoomEvent::try_from(e).unwrap_err().field().to_owned()
        };
        assert_eq!(
            bad(|e| e.room = "r@conference.a.test/x".into()),
            "event.room"
        );
        assert_eq!(bad(|e| e.seq = 0), "event.seq");
        assert_eq!(bad(|e| e.input = None), "event.input");
        assert_eq!(
            bad(|e| e.input = Some(pb::Input { kind: None })),
            "event.input.kind"
        );
        assert_eq!(
            bad(|e| {
                e.input = Some(pb::Input {
                    kind: Some(pb::input::Kind::Bounced(pb::Bounced { from: "x@".into() })),
                })
            }),
            "event.input.bounced.from"
        );
    }

    #[test]
    fn create_slave_must_name_its_snapshots_room() {
        let mut room = dmuc_room::Room::new(
            "r@conference.a.test".parse().unwrap(),
            dmuc_room::RoomSettings {
                epoch: 1,
                salt: std::sync::Arc::from(&b"s"[..]),
                bounds: dmuc_room::ConfigBounds {
                    max_users: 10,
                    max_history: 10,
                },
                lock_new_rooms: false,
                default_config: Default::default(),
                rate_limit: None,
            },
        );
        room.handle(Input::Shutdown, Timestamp(0));
        let start = SlaveStart {
            snapshot: room.snapshot(),
            seq: 7,
            deliver_after: 9,
        };
        let mut frame = pb::CreateSlave::from(&start);
        assert_eq!(SlaveStart::try_from(frame.clone()), Ok(start));

        frame.room = "other@conference.a.test".into();
        assert_eq!(
            SlaveStart::try_from(frame.clone()),
            Err(ProtocolError::Invalid {
                field: "create.room".into(),
                reason: "differs from snapshot.jid"
            })
        );
        frame.snapshot = None;
        assert_eq!(
            SlaveStart::try_from(frame).unwrap_err().field(),
            "create.snapshot"
        );
    }
}
