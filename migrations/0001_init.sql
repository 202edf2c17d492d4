-- dmuc master storage, schema version 1.
--
-- Every room in `rooms` is a persistent room: temporary rooms never reach
-- the store. Times are milliseconds since the Unix epoch. STRICT tables make
-- SQLite enforce the declared column types.

-- One row: the boot epoch (part of every stanza id, so ids never repeat even
-- if a crash loses the tail of a room's sequence) and the secret salt of
-- XEP-0421 occupant ids.
CREATE TABLE meta (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    epoch INTEGER NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    salt  BLOB CHECK (salt IS NULL OR length(salt) = 32)
) STRICT;

INSERT INTO meta (id, epoch, salt) VALUES (0, 0, NULL);

CREATE TABLE rooms (
    jid          TEXT PRIMARY KEY NOT NULL,
    -- dmuc_room::RoomConfig as JSON (serde defaults fill fields added later).
    config       TEXT NOT NULL,
    -- The subject: all three NULL when none was ever set.
    subject_text TEXT,
    subject_nick TEXT,
    subject_at   INTEGER,
    created_at   INTEGER NOT NULL
) STRICT;

-- Only affiliations other than `none`: setting `none` deletes the row.
CREATE TABLE affiliations (
    room        TEXT NOT NULL REFERENCES rooms (jid) ON DELETE CASCADE,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL CHECK (affiliation IN ('owner', 'admin', 'member', 'outcast')),
    PRIMARY KEY (room, jid)
) STRICT, WITHOUT ROWID;

-- Room messages. The primary key doubles as the index for "newest N of a
-- room" and "from seq S on" reads and for the cascade from `rooms`.
-- Stanza ids are `epoch-seq` and so unique per room, not across rooms
-- (XEP-0359 ids are scoped by the room JID).
CREATE TABLE messages (
    room        TEXT NOT NULL REFERENCES rooms (jid) ON DELETE CASCADE,
    seq         INTEGER NOT NULL CHECK (seq > 0),
    stanza_id   TEXT NOT NULL,
    occupant_id TEXT NOT NULL,
    nick        TEXT NOT NULL,
    sender      TEXT NOT NULL,
    -- The sender's own stanza id, if it gave one.
    msg_id      TEXT,
    at_ms       INTEGER NOT NULL,
    -- Approximate stanza size in characters, for the joiner's `maxchars`.
    size        INTEGER NOT NULL CHECK (size >= 0),
    -- The stanza's children (body, origin-id, ...) as concatenated XML.
    payload_xml TEXT NOT NULL,
    PRIMARY KEY (room, seq),
    UNIQUE (room, stanza_id)
) STRICT;
