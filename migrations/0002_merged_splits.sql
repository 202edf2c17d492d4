-- dmuc master storage, schema version 2.
--
-- How far each domain's last split of a room is merged
-- (`dmuc_room::SplitProgress`): written in the same transaction as what a
-- merge changed, so that a merge a peerhost resubmits after a restart of
-- the master is recognized and not merged twice.
CREATE TABLE merged_splits (
    room       TEXT NOT NULL REFERENCES rooms (jid) ON DELETE CASCADE,
    domain     TEXT NOT NULL,
    -- When the split began (its name), ms since the Unix epoch.
    began_ms   INTEGER NOT NULL,
    -- The split's submissions below this index are merged.
    next_index INTEGER NOT NULL CHECK (next_index >= 0),
    PRIMARY KEY (room, domain)
) STRICT, WITHOUT ROWID;
