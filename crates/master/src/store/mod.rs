//! The master's durable storage: persistent rooms, their affiliations,
//! subject, messages and how far splits are merged into them, plus the boot epoch and the occupant-id salt, in one
//! SQLite file (WAL mode).
//!
//! # Layout
//! - this module: [`Store`] (open, migrations, reads, meta), [`StoreOptions`],
//!   [`Durability`], [`StoreError`].
//! - [`writer`]: [`Writer`] and [`Commit`], the group-commit writer task.
//! - `codec`: rows to and from `dmuc_room` types (payload XML, JIDs, seqs).
//!
//! ```text
//!  room task ─┐  submit(room, Vec<Persist>) ┌──────────────────────────────┐
//!  room task ─┼──────── bounded queue ─────▶│ writer task (one connection) │──▶ SQLite (WAL)
//!  room task ─┘ ◀── Commit resolves, in     │ drain ≤ N changes, 1 txn,    │      ▲
//!                   submission order        │ 1 commit, resolve all        │      │
//!                                           └──────────────────────────────┘      │
//!  load_rooms / messages / next_epoch / salt ── reader pool ────────────────────────┘
//! ```
//!
//! All writes of room state go through the single writer task, so a busy
//! room costs one fsync per *group* of messages rather than per message, and
//! the database never sees two writers of room data. Reads use a small pool:
//! WAL lets them run beside the writer and see every resolved [`Commit`].
//!
//! Queries are runtime `sqlx::query`/`query_as` calls, so building the crate
//! needs no database; the schema lives in `migrations/` and is applied by
//! [`Store::open`].

mod codec;
#[cfg(test)]
mod tests;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dmuc_room::{Affiliation, Seq, SplitProgress, StoredRoom, Subject, Timestamp};
use jid::BareJid;
use serde::Deserialize;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use tokio::task::JoinHandle;

use self::codec::{MessageRow, RoomRow};
pub use self::writer::{Commit, Writer};
use self::writer::{Counters, Request};

/// The schema, embedded at compile time from the workspace's `migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// How hard a resolved [`Commit`] is to lose.
///
/// Both levels survive a crash of the master process (including `kill -9`):
/// a committed transaction is in the WAL file, which the OS writes back even
/// if the process dies. They differ on power loss or a kernel crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous = FULL`: the WAL is fsynced at every commit, so every
    /// resolved [`Commit`] also survives power loss. Costs one fsync per
    /// group commit (≈4 ms on this disk).
    Full,
    /// `synchronous = NORMAL` (the default): the WAL is fsynced only at
    /// checkpoints. Power loss may roll back the most recent commits (never
    /// corrupts the database); stanza ids stay unique because the epoch is
    /// always written with `FULL`.
    #[default]
    Normal,
}

impl From<Durability> for SqliteSynchronous {
    fn from(d: Durability) -> Self {
        match d {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        }
    }
}

/// Tuning of a [`Store`]; `StoreOptions::default()` suits the master.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub durability: Durability,
    /// How long a statement waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// Batches that may wait for the writer before `submit` blocks (backpressure).
    pub queue_capacity: usize,
    /// The writer stops draining the queue into one transaction at this many changes.
    pub max_group_changes: usize,
    /// Connections of the reader pool.
    pub readers: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Normal,
            busy_timeout: Duration::from_secs(5),
            queue_capacity: 4096,
            max_group_changes: 1000,
            readers: 4,
        }
    }
}

/// Everything that can go wrong in the store.
///
/// `Display` never shows database internals (it may reach remote peers via
/// error texts); the source chain and `Debug` keep them for logs.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite or the driver failed (I/O, disk full, constraint, ...).
    #[error("storage failure")]
    Database(#[source] Arc<sqlx::Error>),
    /// The schema could not be brought up to date.
    #[error("storage schema migration failed")]
    Migrate(#[source] Arc<MigrateError>),
    /// A stored value cannot be read back (or a value cannot be stored).
    #[error("invalid stored data")]
    Invalid(String),
    /// The writer has shut down; the change was not written.
    #[error("storage is shut down")]
    Closed,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(Arc::new(e))
    }
}

impl From<MigrateError> for StoreError {
    fn from(e: MigrateError) -> Self {
        StoreError::Migrate(Arc::new(e))
    }
}

impl StoreError {
    /// Whether the failure comes from the data of one batch (a constraint,
    /// an unencodable value) rather than from the database as a whole.
    fn is_data_error(&self) -> bool {
        match self {
            StoreError::Database(e) => matches!(
                &**e,
                sqlx::Error::Database(db) if db.kind() != sqlx::error::ErrorKind::Other
            ),
            StoreError::Invalid(_) => true,
            StoreError::Migrate(_) | StoreError::Closed => false,
        }
    }
}

/// What the writer has done since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Transactions that failed and were rolled back.
    pub failed_transactions: u64,
    /// Batches (`submit` calls) made durable.
    pub batches: u64,
    /// Individual changes (`Persist` values) made durable.
    pub changes: u64,
}

/// The master's SQLite database: reads here, writes through [`Store::writer`].
#[derive(Debug)]
pub struct Store {
    pool: SqlitePool,
    connect: SqliteConnectOptions,
    writer: Writer,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl Store {
    /// Opens (creating if missing) and migrates the database at `path`, and starts its writer task.
    pub async fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(options.durability.into())
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .connect_with(connect.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let conn = connect.connect().await?;
        let counters = Arc::new(Counters::default());
        let (writer, task) = writer::spawn(conn, connect.clone(), &options, counters.clone());
        Ok(Store {
            pool,
            connect,
            writer,
            task,
            counters,
        })
    }

    /// A handle that submits changes to the group-commit writer.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Counters of the writer's transactions, batches and changes.
    pub fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }

    /// Increments and returns the boot epoch, durably (fsynced) even under [`Durability::Normal`].
    pub async fn next_epoch(&self) -> Result<u64, StoreError> {
        let mut conn = self.meta_connection().await?;
        let epoch: i64 =
            sqlx::query_scalar("UPDATE meta SET epoch = epoch + 1 WHERE id = 0 RETURNING epoch")
                .fetch_one(&mut conn)
                .await?;
        conn.close().await?;
        codec::u64_from_db(epoch, "epoch")
    }

    /// The service's secret 32-byte salt, created (durably) on first use.
    pub async fn salt(&self) -> Result<[u8; 32], StoreError> {
        if let Some(salt) = self.read_salt().await? {
            return Ok(salt);
        }
        let fresh: [u8; 32] = rand::random();
        let mut conn = self.meta_connection().await?;
        // `salt IS NULL`: whoever writes first wins, and everyone reads that one.
        sqlx::query("UPDATE meta SET salt = ? WHERE id = 0 AND salt IS NULL")
            .bind(&fresh[..])
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        self.read_salt()
            .await?
            .ok_or_else(|| StoreError::Invalid("salt missing after creation".into()))
    }

    /// Every stored room with its newest `history` messages, ordered by room JID.
    pub async fn load_rooms(
        &self,
        history: usize,
    ) -> Result<Vec<(BareJid, StoredRoom)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // One read transaction: a consistent snapshot even while the writer runs.
        let mut tx = conn.begin().await?;
        let rows: Vec<RoomRow> = sqlx::query_as(
            "SELECT jid, config, subject_text, subject_nick, subject_at FROM rooms ORDER BY jid",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut affiliations: std::collections::HashMap<String, Vec<(BareJid, Affiliation)>> =
            Default::default();
        let aff_rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT room, jid, affiliation FROM affiliations ORDER BY room, jid")
                .fetch_all(&mut *tx)
                .await?;
        for (room, jid, affiliation) in aff_rows {
            let entry = (codec::jid(&jid)?, codec::affiliation(&affiliation)?);
            affiliations.entry(room).or_default().push(entry);
        }
        let mut merged: std::collections::HashMap<String, Vec<SplitProgress>> = Default::default();
        let merged_rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT room, domain, began_ms, next_index FROM merged_splits ORDER BY room, domain",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (room, domain, began, next_index) in merged_rows {
            merged.entry(room).or_default().push(SplitProgress {
                domain,
                began: Timestamp(began),
                next_index: codec::u64_from_db(next_index, "next_index")?,
            });
        }
        let limit = i64::try_from(history).unwrap_or(i64::MAX);
        let mut rooms = Vec::with_capacity(rows.len());
        for row in rows {
            let newest: Vec<MessageRow> = sqlx::query_as(
                "SELECT seq, stanza_id, occupant_id, nick, sender, msg_id, at_ms, size, payload_xml \
                 FROM messages WHERE room = ? ORDER BY seq DESC LIMIT ?",
            )
            .bind(&row.jid)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let max_seq: Option<i64> = match newest.first() {
                Some(m) => Some(m.seq),
                None => {
                    sqlx::query_scalar("SELECT MAX(seq) FROM messages WHERE room = ?")
                        .bind(&row.jid)
                        .fetch_one(&mut *tx)
                        .await?
                }
            };
            let next_seq = match max_seq {
                Some(s) => Seq(codec::u64_from_db(s, "seq")? + 1),
                None => Seq(1),
            };
            let history = newest
                .into_iter()
                .rev()
                .map(|m| m.into_message().map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            let stored = StoredRoom {
                config: codec::config(&row.config)?,
                affiliations: affiliations.remove(&row.jid).unwrap_or_default(),
                subject: subject(&row)?,
                history,
                next_seq,
                merged: merged.remove(&row.jid).unwrap_or_default(),
            };
            rooms.push((codec::jid(&row.jid)?, stored));
        }
        tx.commit().await?;
        Ok(rooms)
    }

    /// Up to `limit` messages of `room` with `seq >= from`, oldest first.
    pub async fn messages(
        &self,
        room: &BareJid,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Arc<dmuc_room::RoomMessage>>, StoreError> {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT seq, stanza_id, occupant_id, nick, sender, msg_id, at_ms, size, payload_xml \
             FROM messages WHERE room = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(room.as_str())
        .bind(i64::try_from(from.0).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|m| m.into_message().map(Arc::new))
            .collect()
    }

    /// Finishes every queued write, stops the writer and closes the database cleanly (WAL checkpointed).
    pub async fn close(self) {
        let Store {
            pool, writer, task, ..
        } = self;
        // Queued behind every batch already submitted; the writer then refuses new ones.
        writer.request(Request::Close).await;
        drop(writer);
        if let Err(e) = task.await {
            tracing::error!(error = %e, "storage writer task failed");
        }
        pool.close().await;
    }

    async fn read_salt(&self) -> Result<Option<[u8; 32]>, StoreError> {
        let salt: Option<Vec<u8>> = sqlx::query_scalar("SELECT salt FROM meta WHERE id = 0")
            .fetch_one(&self.pool)
            .await?;
        salt.map(|s| {
            <[u8; 32]>::try_from(s.as_slice())
                .map_err(|_| StoreError::Invalid("salt is not 32 bytes".into()))
        })
        .transpose()
    }

    /// A one-off connection that fsyncs every commit, whatever the store's durability:
    /// the epoch and the salt must never roll back.
    async fn meta_connection(&self) -> Result<SqliteConnection, StoreError> {
        Ok(self
            .connect
            .clone()
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await?)
    }
}

fn subject(row: &RoomRow) -> Result<Option<Subject>, StoreError> {
    let (Some(text), Some(at)) = (&row.subject_text, row.subject_at) else {
        return Ok(None);
    };
    Ok(Some(Subject {
        text: text.clone(),
        nick: row.subject_nick.as_deref().map(codec::nick).transpose()?,
        at: Timestamp(at),
    }))
}
