-- dmuc peerhost storage, schema version 1: the slaves' state, so that a
-- restarted peerhost resumes its slaves instead of asking every master for
-- whole snapshots again.
--
-- A slave's state is its last snapshot plus the events applied after it, in
-- `events`: replaying them through the replica gives the state at the last
-- stored event. Writing a snapshot replaces the row and empties the room's
-- log. Sequence numbers are the master's (`Event.seq`). STRICT tables make
-- SQLite enforce the declared column types.

CREATE TABLE slaves (
    -- Bare JID of the room, e.g. lounge@conference.a.test.
    room          TEXT PRIMARY KEY NOT NULL,
    -- The master's MUC domain: the room's domain, as in `Hello.master_jid`.
    master        TEXT NOT NULL,
    -- The last event reflected in `snapshot`.
    seq           INTEGER NOT NULL CHECK (seq >= 0),
    -- Events up to here were delivered by the master itself: never deliver them.
    deliver_after INTEGER NOT NULL CHECK (deliver_after >= 0),
    -- The room's whole state: a protobuf-encoded dmuc.peering.v1.RoomSnapshot.
    snapshot      BLOB NOT NULL,
    -- When the snapshot was written (ms since the Unix epoch), for operators.
    saved_at      INTEGER NOT NULL
) STRICT;

CREATE INDEX slaves_by_master ON slaves (master);

-- Events applied after the room's snapshot, in order. No foreign key: the
-- writer deletes a room's events itself, and a stray row (never expected)
-- must not fail a whole group commit; loading ignores rows without a slave.
CREATE TABLE events (
    room  TEXT NOT NULL,
    seq   INTEGER NOT NULL CHECK (seq >= 1),
    -- A protobuf-encoded dmuc.peering.v1.Event, as the master sent it.
    event BLOB NOT NULL,
    PRIMARY KEY (room, seq)
) STRICT, WITHOUT ROWID;
