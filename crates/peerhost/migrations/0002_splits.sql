-- dmuc peerhost storage, schema version 2: splits. While a slave cannot
-- reach its room's master, it serves its domain's users alone (a split, see
-- dmuc_room::split); what they did then must survive a crash of the
-- peerhost until the master has merged it.
--
-- A split is the replica's room when it began (`splits`) and the inputs it
-- handled since, in local order (`split_events`): replaying them through
-- dmuc_room::split::Split::restore gives the split's room and its
-- provisional ids again. A split stays stored, healed or not, until the
-- master confirms that it merged it (`SplitMerged`); a room may have more
-- than one if the link broke again before that.

CREATE TABLE splits (
    -- Bare JID of the room.
    room     TEXT NOT NULL,
    -- When the split began (ms since the Unix epoch): with the peerhost's
    -- domain, it names the split (and is part of its provisional ids).
    began    INTEGER NOT NULL,
    -- The master's MUC domain.
    master   TEXT NOT NULL,
    -- The last master event the replica had applied when the split began.
    seq      INTEGER NOT NULL CHECK (seq >= 0),
    -- The replica's room then: a protobuf-encoded dmuc.peering.v1.RoomSnapshot.
    snapshot BLOB NOT NULL,
    -- 1 once the master was reached again and the split was submitted.
    healed   INTEGER NOT NULL DEFAULT 0 CHECK (healed IN (0, 1)),
    PRIMARY KEY (room, began)
) STRICT;

CREATE INDEX splits_by_master ON splits (master);

-- The inputs a split let change its room, in local order.
CREATE TABLE split_events (
    room     TEXT NOT NULL,
    began    INTEGER NOT NULL,
    -- Position in the split's log, from 0.
    idx      INTEGER NOT NULL CHECK (idx >= 0),
    -- When the slave handled it (ms since the Unix epoch).
    at       INTEGER NOT NULL,
    -- A protobuf-encoded dmuc.peering.v1.Input.
    input    BLOB NOT NULL,
    -- The provisional stanza id of the message it became, if any.
    local_id TEXT,
    PRIMARY KEY (room, began, idx)
) STRICT, WITHOUT ROWID;
