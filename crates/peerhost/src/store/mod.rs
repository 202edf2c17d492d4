//! The peerhost's durable storage: each slave's last snapshot and the events
//! it applied since, in one SQLite file (WAL mode), so that a restarted
//! peerhost (or a new stream of the same master) resumes its slaves with a
//! `Resync { room, have_seq }` instead of needing whole new snapshots.
//!
//! # Layout
//! - this module: [`Store`] (open, migrations, reads) and what it reads:
//!   [`StoredSlave`], [`StoredRoom`].
//! - [`writer`]: [`Writer`], the handle of the group-commit writer task.
//! - the schema: `crates/peerhost/migrations/`.
//!
//! ```text
//!  slave task ─┐ snapshot / event / deliver_after   ┌───────────────────────────┐
//!  slave task ─┼────────── bounded queue ──────────▶│ writer task (1 connection)│──▶ SQLite (WAL)
//!  stream ─────┘ delete / delete_master / flush     │ drain ≤ N writes, 1 txn   │      ▲
//!                                                   └───────────────────────────┘      │
//!  stream: load(master) ── reader pool ─────────────────────────────────────────────────┘
//! ```
//!
//! # What is stored, and when
//! Per slave: one row in `slaves` (the room's snapshot, the seq it
//! reflects, the master's domain, `deliver_after`) and its log in `events`
//! (each applied event, as the master encoded it). A slave appends every
//! event it applies to the log, and writes a new snapshot, which empties
//! the log, when it starts from a `CreateSlave`, every
//! [`SNAPSHOT_EVERY`](crate::slave::SNAPSHOT_EVERY) events, when it has
//! been idle for a while, and when it stops with its stream. Loading is the
//! snapshot plus the log replayed ([`crate::slave::Dormant::load`]).
//!
//! Slaves never wait for a commit: they queue and go on, and the writer
//! commits whatever has accumulated in one transaction. So acks may run
//! ahead of storage; a crash loses the last few events, and the slave then
//! resumes from an earlier `have_seq`, which the master covers with the
//! events it still has (and `deliver_after` for those already delivered).
//! Splits are stored differently (`splits`, `split_events`): a split's
//! start and every entry of its log, each committed before the local users
//! are told what it did ([`Writer::flush`]), because the master has not
//! seen them. They stay until the master confirms their merge
//! ([`Store::load_splits`] reads them back).
//!
//! The database runs with `synchronous = NORMAL`: commits survive a crash of
//! the process; a power loss may roll back the last ones, to the same effect.

pub mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dmuc_protocol::{RoomEvent, pb};
use dmuc_room::split::{SplitEvent, SplitStart};
use dmuc_room::{Input, RoomSnapshot, StanzaId, Timestamp};
use jid::BareJid;
use prost::Message;
use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use self::writer::Writer;
use crate::Error;

/// The schema, embedded at compile time from the crate's `migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections for reads (loads happen when a master's stream starts).
const READERS: u32 = 2;

/// A slave as stored: its snapshot and the events applied after it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSlave {
    /// The last event reflected in `snapshot`.
    pub seq: u64,
    /// Events up to here were delivered by the master itself.
    pub deliver_after: u64,
    pub snapshot: RoomSnapshot,
    /// Events applied after the snapshot, oldest first.
    pub log: Vec<RoomEvent>,
}

/// A split as stored: where it began and what it let happen since.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSplit {
    pub start: SplitStart,
    /// Submitted to the master, which has not yet confirmed the merge.
    pub healed: bool,
    /// The split's log, in local order (see [`Split::restore`]).
    ///
    /// [`Split::restore`]: dmuc_room::split::Split::restore
    pub log: Vec<SplitEvent>,
}

/// One stored slave, as [`Store::rooms`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRoom {
    pub room: BareJid,
    /// The master's domain (the room's).
    pub master: BareJid,
    /// The last event reflected in the stored snapshot.
    pub snapshot_seq: u64,
    /// Events in the log after the snapshot.
    pub logged: u64,
    /// The last event stored, in the snapshot or the log.
    pub last_seq: u64,
}

/// The peerhost's SQLite database: reads here, writes through [`Store::writer`].
/// Cheap to clone; every clone is the same database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    writer: Writer,
}

impl Store {
    /// Opens (creating if missing) and migrates the database at `path`, and starts its writer task.
    pub async fn open(path: &Path) -> Result<Store, Error> {
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(connect.clone())
            .await
            .map_err(|e| Error::StorageOpen {
                path: path.to_owned(),
                source: Arc::new(e),
            })?;
        MIGRATOR.run(&pool).await?;
        let writer = writer::spawn(sqlx::ConnectOptions::connect(&connect).await?);
        Ok(Store { pool, writer })
    }

    /// A handle that queues writes for the writer task.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Every stored slave, ordered by room.
    pub async fn rooms(&self) -> Result<Vec<StoredRoom>, Error> {
        let rows: Vec<(String, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT s.room, s.master, s.seq, COUNT(e.seq), MAX(e.seq) \
             FROM slaves s LEFT JOIN events e ON e.room = s.room \
             GROUP BY s.room ORDER BY s.room",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(room, master, seq, logged, last)| {
                let snapshot_seq = from_db(seq, "slaves.seq")?;
                Ok(StoredRoom {
                    room: stored_jid(&room)?,
                    master: stored_jid(&master)?,
                    snapshot_seq,
                    logged: from_db(logged, "count")?,
                    last_seq: last.map_or(Ok(snapshot_seq), |l| from_db(l, "events.seq"))?,
                })
            })
            .collect()
    }

    /// How many slaves are stored (running, or waiting for their master).
    pub async fn count_slaves(&self) -> Result<u64, Error> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM slaves")
            .fetch_one(&self.pool)
            .await?;
        from_db(n, "count")
    }

    /// The stored slaves of `master`'s rooms, ordered by room; a room whose
    /// snapshot cannot be read back is left out (and logged), a log that
    /// cannot is cut before the bad event.
    pub async fn load(&self, master: &BareJid) -> Result<Vec<StoredSlave>, Error> {
        let mut conn = self.pool.acquire().await?;
        // One read transaction: a consistent view even while the writer runs.
        let mut tx = conn.begin().await?;
        let rows: Vec<(String, i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT room, seq, deliver_after, snapshot FROM slaves WHERE master = ? ORDER BY room",
        )
        .bind(master.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut slaves = Vec::with_capacity(rows.len());
        for (room, seq, deliver_after, snapshot) in rows {
            let events: Vec<(Vec<u8>,)> =
                sqlx::query_as("SELECT event FROM events WHERE room = ? ORDER BY seq")
                    .bind(&room)
                    .fetch_all(&mut *tx)
                    .await?;
            match decode_slave(&room, seq, deliver_after, &snapshot) {
                Ok(mut slave) => {
                    slave.log = decode_log(&room, events);
                    slaves.push(slave);
                }
                Err(e) => tracing::error!(room, error = %e, "stored slave unreadable: left out"),
            }
        }
        tx.commit().await?;
        Ok(slaves)
    }

    /// The stored splits of `master`'s rooms (serving `domain`), oldest first
    /// per room. A split whose start cannot be read back is left out (and
    /// logged); a log is cut before an entry that cannot.
    pub async fn load_splits(
        &self,
        master: &BareJid,
        domain: &str,
    ) -> Result<Vec<StoredSplit>, Error> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let rows: Vec<(String, i64, i64, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT room, began, seq, snapshot, healed FROM splits WHERE master = ? \
             ORDER BY room, began",
        )
        .bind(master.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut splits = Vec::with_capacity(rows.len());
        for (room, began, seq, snapshot, healed) in rows {
            let entries: Vec<(i64, Vec<u8>, Option<String>)> = sqlx::query_as(
                "SELECT at, input, local_id FROM split_events WHERE room = ? AND began = ? \
                 ORDER BY idx",
            )
            .bind(&room)
            .bind(began)
            .fetch_all(&mut *tx)
            .await?;
            let start = decode_snapshot(&room, &snapshot).and_then(|snapshot| {
                Ok(SplitStart {
                    snapshot,
                    seq: from_db(seq, "splits.seq")?,
                    domain: domain.to_owned(),
                    began: Timestamp(began),
                })
            });
            match start {
                Ok(start) => splits.push(StoredSplit {
                    start,
                    healed: healed != 0,
                    log: decode_split_log(&room, entries),
                }),
                Err(e) => tracing::error!(room, error = %e, "stored split unreadable: left out"),
            }
        }
        tx.commit().await?;
        Ok(splits)
    }

    /// Finishes every queued write, stops the writer and closes the database.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

fn decode_snapshot(room: &str, snapshot: &[u8]) -> Result<RoomSnapshot, Error> {
    let snapshot = pb::RoomSnapshot::decode(snapshot)
        .map_err(|e| Error::StoredData(format!("snapshot: {e}")))?;
    let snapshot =
        RoomSnapshot::try_from(snapshot).map_err(|e| Error::StoredData(e.to_string()))?;
    if snapshot.jid.as_str() != room {
        return Err(Error::StoredData("snapshot of another room".into()));
    }
    Ok(snapshot)
}

fn decode_slave(
    room: &str,
    seq: i64,
    deliver_after: i64,
    snapshot: &[u8],
) -> Result<StoredSlave, Error> {
    let snapshot = decode_snapshot(room, snapshot)?;
    Ok(StoredSlave {
        seq: from_db(seq, "slaves.seq")?,
        deliver_after: from_db(deliver_after, "slaves.deliver_after")?,
        snapshot,
        log: Vec::new(),
    })
}

/// The events of a room's log, up to the first that cannot be read back.
fn decode_log(room: &str, rows: Vec<(Vec<u8>,)>) -> Vec<RoomEvent> {
    let mut log = Vec::with_capacity(rows.len());
    for (bytes,) in rows {
        let event = pb::Event::decode(bytes.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|e| RoomEvent::try_from(e).map_err(|e| e.to_string()));
        match event {
            Ok(event) if event.room.as_str() == room => log.push(event),
            Ok(_) => {
                tracing::error!(room, "stored event of another room: log cut there");
                break;
            }
            Err(error) => {
                tracing::error!(room, %error, "stored event unreadable: log cut there");
                break;
            }
        }
    }
    log
}

/// A split's log, up to the first entry that cannot be read back.
fn decode_split_log(room: &str, rows: Vec<(i64, Vec<u8>, Option<String>)>) -> Vec<SplitEvent> {
    let mut log = Vec::with_capacity(rows.len());
    for (at, input, local_id) in rows {
        let input = pb::Input::decode(input.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|i| Input::try_from(i).map_err(|e| e.to_string()));
        match input {
            Ok(input) => log.push(SplitEvent {
                now: Timestamp(at),
                input,
                local_id: local_id.map(StanzaId::from_stored),
            }),
            Err(error) => {
                tracing::error!(room, %error, "stored split entry unreadable: log cut there");
                break;
            }
        }
    }
    log
}

fn stored_jid(s: &str) -> Result<BareJid, Error> {
    s.parse()
        .map_err(|_| Error::StoredData(format!("not a bare jid: {s}")))
}

/// An integer column read back as the `u64` it was written from.
fn from_db(v: i64, column: &str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::StoredData(format!("{column} is negative")))
}

/// A `u64` as SQLite stores it; numbers past `i64::MAX` (never seen in
/// practice) cannot be stored.
fn to_db(v: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::StoredData(format!("{what} too large to store")))
}
