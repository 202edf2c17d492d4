//! The group-commit writer: one task, one connection, one transaction per
//! group of queued batches.
//!
//! Rooms [`Writer::submit`] their `Persist` changes into a bounded queue. The
//! task takes the first batch, drains whatever else is already queued (up to
//! [`StoreOptions::max_group_changes`](super::StoreOptions) changes), applies
//! all of it in one transaction and commits once; then it resolves each
//! batch's [`Commit`], in submission order. While one commit is being synced,
//! the next group gathers in the queue, so the commit rate adapts to the load
//! without any timer.
//!
//! Changes are applied in order, but consecutive messages (of any rooms) are
//! collected and inserted with multi-row `INSERT`s: a statement round trip to
//! SQLite's worker thread costs more than the row itself.
//!
//! Failure: a failed group is rolled back, so nothing of it is applied. If
//! the cause is one batch's data (a constraint), the batches are retried one
//! per transaction so a bad batch fails alone; otherwise (I/O error, disk
//! full) every batch of the group gets the error. Either way the task logs
//! and goes on serving later batches.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dmuc_room::{Persist, RoomConfig, RoomMessage};
use jid::BareJid;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{StoreError, StoreOptions, StoreStats, codec};

/// Rows per multi-row `INSERT` (10 bound values each, well under SQLite's
/// 32,766-variable limit).
const ROWS_PER_INSERT: usize = 200;

/// Submits room changes to the store's writer task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    queue: mpsc::Sender<Request>,
}

/// Resolves once the changes of one [`Writer::submit`] are durable, or failed.
///
/// Commits resolve in submission order: when one is ready, all submitted
/// before it are too.
#[derive(Debug)]
#[must_use = "a Commit does nothing unless awaited; drop it only if durability does not matter"]
pub struct Commit(oneshot::Receiver<Result<(), StoreError>>);

impl Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped sender means the writer task is gone: nothing was written.
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}

pub(super) enum Request {
    Write(Batch),
    /// Finish what is queued, then refuse new batches and end.
    Close,
}

pub(super) struct Batch {
    room: BareJid,
    changes: Vec<Persist>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl Writer {
    /// Queues `changes` of `room` (waiting while the queue is full); an empty list is a barrier.
    pub async fn submit(&self, room: BareJid, changes: Vec<Persist>) -> Commit {
        let (done, commit) = oneshot::channel();
        let batch = Batch {
            room,
            changes,
            done,
        };
        if let Err(mpsc::error::SendError(Request::Write(batch))) =
            self.queue.send(Request::Write(batch)).await
        {
            let _ = batch.done.send(Err(StoreError::Closed));
        }
        Commit(commit)
    }

    /// Queues `changes` of `room` and waits until they are durable.
    pub async fn write(&self, room: BareJid, changes: Vec<Persist>) -> Result<(), StoreError> {
        self.submit(room, changes).await.await
    }

    pub(super) async fn request(&self, request: Request) {
        // Fails only if the task is already gone, which is what the caller wants.
        let _ = self.queue.send(request).await;
    }
}

/// Counters shared by the writer task and [`super::Store::stats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    transactions: AtomicU64,
    failed_transactions: AtomicU64,
    batches: AtomicU64,
    changes: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> StoreStats {
        StoreStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            failed_transactions: self.failed_transactions.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
        }
    }

    fn committed(&self, batches: &[Batch]) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.batches
            .fetch_add(batches.len() as u64, Ordering::Relaxed);
        let changes: usize = batches.iter().map(|b| b.changes.len()).sum();
        self.changes.fetch_add(changes as u64, Ordering::Relaxed);
    }

    fn failed(&self) {
        self.failed_transactions.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts the writer task on `conn`; `connect` reopens the connection if it breaks.
pub(super) fn spawn(
    conn: SqliteConnection,
    connect: SqliteConnectOptions,
    options: &StoreOptions,
    counters: Arc<Counters>,
) -> (Writer, JoinHandle<()>) {
    let (queue, rx) = mpsc::channel(options.queue_capacity.max(1));
    let task = WriterTask {
        conn,
        connect,
        rx,
        counters,
        max_group_changes: options.max_group_changes.max(1),
        // A room that shows up without its config (not expected) is stored as
        // persistent with default settings, so it is restored rather than lost.
        default_config: codec::config_to_json(&RoomConfig {
            persistent: true,
            ..RoomConfig::default()
        })
        .expect("the default config serializes"),
        existing: HashSet::new(),
    };
    (Writer { queue }, tokio::spawn(task.run()))
}

struct WriterTask {
    conn: SqliteConnection,
    connect: SqliteConnectOptions,
    rx: mpsc::Receiver<Request>,
    counters: Arc<Counters>,
    max_group_changes: usize,
    default_config: String,
    /// Rooms known to have a row as of the last commit, so a message does
    /// not cost an extra "create the room if missing" statement. Only
    /// committed facts go in; nothing else deletes rooms.
    existing: HashSet<BareJid>,
}

impl WriterTask {
    async fn run(mut self) {
        let mut group = Vec::new();
        while let Some(first) = self.rx.recv().await {
            let mut changes = 0;
            self.take(first, &mut group, &mut changes);
            while changes < self.max_group_changes {
                match self.rx.try_recv() {
                    Ok(request) => self.take(request, &mut group, &mut changes),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group).await;
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = ?e, "closing the storage writer connection failed");
        }
        tracing::debug!("storage writer stopped");
    }

    fn take(&mut self, request: Request, group: &mut Vec<Batch>, changes: &mut usize) {
        match request {
            Request::Write(batch) => {
                // Count an empty barrier as one so a flood of them still ends a group.
                *changes += batch.changes.len().max(1);
                group.push(batch);
            }
            // Batches already queued are still written; later `submit`s fail.
            Request::Close => self.rx.close(),
        }
    }

    /// Writes `group` (leaving it empty) and resolves its commits in order.
    async fn commit_group(&mut self, group: &mut Vec<Batch>) {
        if group.iter().all(|b| b.changes.is_empty()) {
            resolve(group.drain(..), Ok(()));
            return;
        }
        let started = Instant::now();
        match self.apply(group).await {
            Ok(()) => {
                self.counters.committed(group);
                tracing::trace!(
                    batches = group.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "group committed"
                );
                resolve(group.drain(..), Ok(()));
            }
            Err(e) if group.len() > 1 && e.is_data_error() => {
                self.counters.failed();
                tracing::warn!(
                    error = ?e,
                    batches = group.len(),
                    "group commit rejected by one batch's data; retrying batches one by one"
                );
                for batch in group.drain(..) {
                    let one = std::slice::from_ref(&batch);
                    let result = self.apply(one).await;
                    match &result {
                        Ok(()) => self.counters.committed(one),
                        Err(e) => {
                            self.counters.failed();
                            tracing::error!(room = %batch.room, error = ?e, "storage write failed");
                        }
                    }
                    let _ = batch.done.send(result);
                }
            }
            Err(e) => {
                self.counters.failed();
                tracing::error!(error = ?e, batches = group.len(), "group commit failed");
                resolve(group.drain(..), Err(e));
                self.check_connection().await;
            }
        }
    }

    /// Applies `batches` in one transaction: all of them or, on error, nothing.
    async fn apply(&mut self, batches: &[Batch]) -> Result<(), StoreError> {
        let now = now_millis();
        // IMMEDIATE takes the write lock up front, so a meta write on another
        // connection makes us wait (busy_timeout) instead of failing mid-way.
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        // What this transaction does to rooms' existence, merged into
        // `existing` only once it commits. A room in both sets was deleted
        // and then created again.
        let mut created: HashSet<&BareJid> = HashSet::new();
        let mut deleted: HashSet<&BareJid> = HashSet::new();
        let mut messages: Vec<(&BareJid, &RoomMessage)> = Vec::new();
        for batch in batches {
            let room = &batch.room;
            for change in &batch.changes {
                let present = created.contains(room)
                    || (self.existing.contains(room) && !deleted.contains(room));
                if !present && !matches!(change, Persist::Config(_) | Persist::Delete) {
                    created.insert(room);
                    sqlx::query(
                        "INSERT INTO rooms (jid, config, created_at) VALUES (?, ?, ?) \
                         ON CONFLICT (jid) DO NOTHING",
                    )
                    .bind(room.as_str())
                    .bind(&self.default_config)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                match change {
                    Persist::Message(m) => {
                        messages.push((room, m));
                        if messages.len() >= ROWS_PER_INSERT {
                            insert_messages(&mut tx, &messages).await?;
                            messages.clear();
                        }
                    }
                    Persist::Config(config) => {
                        sqlx::query(
                            "INSERT INTO rooms (jid, config, created_at) VALUES (?, ?, ?) \
                             ON CONFLICT (jid) DO UPDATE SET config = excluded.config",
                        )
                        .bind(room.as_str())
                        .bind(codec::config_to_json(config)?)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        created.insert(room);
                    }
                    Persist::Affiliation(jid, dmuc_room::Affiliation::None) => {
                        sqlx::query("DELETE FROM affiliations WHERE room = ? AND jid = ?")
                            .bind(room.as_str())
                            .bind(jid.as_str())
                            .execute(&mut *tx)
                            .await?;
                    }
                    Persist::Affiliation(jid, affiliation) => {
                        sqlx::query(
                            "INSERT INTO affiliations (room, jid, affiliation) VALUES (?, ?, ?) \
                             ON CONFLICT (room, jid) DO UPDATE SET affiliation = excluded.affiliation",
                        )
                        .bind(room.as_str())
                        .bind(jid.as_str())
                        .bind(affiliation.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                    Persist::Subject(subject) => {
                        sqlx::query(
                            "UPDATE rooms SET subject_text = ?, subject_nick = ?, subject_at = ? \
                             WHERE jid = ?",
                        )
                        .bind(&subject.text)
                        .bind(subject.nick.as_ref().map(|n| n.as_str()))
                        .bind(subject.at.millis())
                        .bind(room.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                    Persist::Merged(progress) => {
                        sqlx::query(
                            "INSERT INTO merged_splits (room, domain, began_ms, next_index) \
                             VALUES (?, ?, ?, ?) ON CONFLICT (room, domain) DO UPDATE \
                             SET began_ms = excluded.began_ms, next_index = excluded.next_index",
                        )
                        .bind(room.as_str())
                        .bind(&progress.domain)
                        .bind(progress.began.millis())
                        .bind(codec::u64_to_db(progress.next_index, "next_index")?)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Persist::Delete => {
                        // Messages collected so far precede the delete: write
                        // them first so the cascade removes them too.
                        insert_messages(&mut tx, &messages).await?;
                        messages.clear();
                        sqlx::query("DELETE FROM rooms WHERE jid = ?")
                            .bind(room.as_str())
                            .execute(&mut *tx)
                            .await?;
                        created.remove(room);
                        deleted.insert(room);
                    }
                }
            }
        }
        insert_messages(&mut tx, &messages).await?;
        tx.commit().await?;
        for room in deleted {
            self.existing.remove(room);
        }
        self.existing.extend(created.into_iter().cloned());
        Ok(())
    }

    /// After a database-wide failure: reconnects if the connection itself is broken.
    async fn check_connection(&mut self) {
        if self.conn.ping().await.is_ok() {
            return;
        }
        match self.connect.connect().await {
            Ok(conn) => {
                tracing::warn!("storage writer reconnected");
                let old = std::mem::replace(&mut self.conn, conn);
                // The old connection is broken; closing it can only fail.
                let _ = old.close().await;
            }
            Err(e) => tracing::error!(error = ?e, "storage writer cannot reconnect"),
        }
    }
}

/// Inserts messages with as few statements as possible.
async fn insert_messages(
    conn: &mut SqliteConnection,
    messages: &[(&BareJid, &RoomMessage)],
) -> Result<(), StoreError> {
    for chunk in messages.chunks(ROWS_PER_INSERT) {
        let encoded = chunk
            .iter()
            .map(|(_, m)| {
                Ok((
                    codec::u64_to_db(m.seq.0, "seq")?,
                    m.payload.to_xml(),
                    i64::try_from(m.size).unwrap_or(i64::MAX),
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages \
             (room, seq, stanza_id, occupant_id, nick, sender, msg_id, at_ms, size, payload_xml) ",
        );
        insert.push_values(
            chunk.iter().zip(&encoded),
            |mut row, ((room, m), (seq, xml, size))| {
                row.push_bind(room.as_str())
                    .push_bind(*seq)
                    .push_bind(m.stanza_id.as_str())
                    .push_bind(m.occupant_id.as_str())
                    .push_bind(m.nick.as_str())
                    .push_bind(m.sender.as_str())
                    .push_bind(m.id.as_deref())
                    .push_bind(m.at.millis())
                    .push_bind(*size)
                    .push_bind(xml.as_str());
            },
        );
        // Not cached: the text varies with the row count and would churn the statement cache.
        insert.build().persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

fn resolve(batches: impl Iterator<Item = Batch>, result: Result<(), StoreError>) {
    for batch in batches {
        // The submitter may have stopped waiting; that is its choice.
        let _ = batch.done.send(result.clone());
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
