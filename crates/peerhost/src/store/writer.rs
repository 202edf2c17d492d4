//! The group-commit writer: one task, one connection, one transaction per
//! group of queued writes.
//!
//! Slaves and streams queue [`Writer`] calls into a bounded queue and go on
//! without waiting for the disk (they wait only while the queue is full).
//! The task takes the first write, drains whatever else is queued (up to
//! [`MAX_GROUP`]), encodes it, applies it in one transaction and commits
//! once. While one commit is being synced the next group gathers, so the
//! commit rate follows the load without any timer. Consecutive log events
//! (of any rooms) go in multi-row `INSERT`s.
//!
//! Failure: a failed group is rolled back whole, and is logged. Its rooms'
//! logs would then have a hole, so the writer drops their later events
//! until a snapshot of the room commits: what is stored for a room is
//! always a snapshot and a contiguous log after it, only perhaps older than
//! the slave.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dmuc_protocol::pb;
use dmuc_room::split::{SplitEvent, SplitStart};
use dmuc_room::{RoomSnapshot, Timestamp};
use jid::BareJid;
use prost::Message;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, QueryBuilder, Sqlite};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, trace, warn};

use super::to_db;
use crate::Error;

/// Writes that may wait for the writer before callers wait (backpressure).
const QUEUE: usize = 4096;

/// The writer stops draining the queue into one transaction at this many writes.
pub const MAX_GROUP: usize = 1024;

/// Log rows per multi-row `INSERT` (3 bound values each).
const ROWS_PER_INSERT: usize = 300;

/// Queues writes for the store's writer task; cheap to clone. Writes are
/// applied in the order they were queued; none waits for the disk.
#[derive(Clone, Debug)]
pub struct Writer {
    queue: mpsc::Sender<Write>,
}

#[derive(Debug)]
enum Write {
    Snapshot {
        seq: u64,
        deliver_after: u64,
        snapshot: Box<RoomSnapshot>,
    },
    Event {
        room: BareJid,
        seq: u64,
        event: Vec<u8>,
    },
    DeliverAfter {
        room: BareJid,
        deliver_after: u64,
    },
    Delete {
        room: BareJid,
    },
    DeleteMaster {
        master: BareJid,
    },
    SplitBegin {
        start: Box<SplitStart>,
    },
    SplitEvent {
        room: BareJid,
        began: Timestamp,
        index: u64,
        event: SplitEvent,
    },
    SplitHealed {
        room: BareJid,
        began: Timestamp,
    },
    SplitMerged {
        room: BareJid,
        began: Timestamp,
    },
    /// Resolved once every write queued before it is committed (or failed).
    Flush(oneshot::Sender<Result<(), Error>>),
    /// Finish what is queued, then refuse new writes and end.
    Close(oneshot::Sender<()>),
}

impl Writer {
    /// Queues a slave's whole state after event `seq`, replacing its stored state and emptying its log.
    pub async fn snapshot(&self, snapshot: RoomSnapshot, seq: u64, deliver_after: u64) {
        self.queue(Write::Snapshot {
            seq,
            deliver_after,
            snapshot: Box::new(snapshot),
        })
        .await;
    }

    /// Queues an event a slave applied (`event` is its encoded `pb::Event`) for the room's log.
    pub async fn event(&self, room: &BareJid, seq: u64, event: Vec<u8>) {
        let room = room.clone();
        self.queue(Write::Event { room, seq, event }).await;
    }

    /// Queues a new `deliver_after` for a stored slave.
    pub async fn deliver_after(&self, room: &BareJid, deliver_after: u64) {
        let room = room.clone();
        self.queue(Write::DeliverAfter {
            room,
            deliver_after,
        })
        .await;
    }

    /// Queues the removal of a room's stored state.
    pub async fn delete(&self, room: &BareJid) {
        let room = room.clone();
        self.queue(Write::Delete { room }).await;
    }

    /// Queues the removal of every stored room of `master`.
    pub async fn delete_master(&self, master: &BareJid) {
        let master = master.clone();
        self.queue(Write::DeleteMaster { master }).await;
    }

    /// Queues the start of a split of the room `start` names.
    pub async fn split_begin(&self, start: &SplitStart) {
        let start = Box::new(start.clone());
        self.queue(Write::SplitBegin { start }).await;
    }

    /// Queues entry `index` of the log of the split of `room` that began at `began`.
    pub async fn split_event(
        &self,
        room: &BareJid,
        began: Timestamp,
        index: u64,
        event: SplitEvent,
    ) {
        let room = room.clone();
        self.queue(Write::SplitEvent {
            room,
            began,
            index,
            event,
        })
        .await;
    }

    /// Queues that a split was submitted to the master (it is kept until merged).
    pub async fn split_healed(&self, room: &BareJid, began: Timestamp) {
        let room = room.clone();
        self.queue(Write::SplitHealed { room, began }).await;
    }

    /// Queues the removal of a split the master has merged.
    pub async fn split_merged(&self, room: &BareJid, began: Timestamp) {
        let room = room.clone();
        self.queue(Write::SplitMerged { room, began }).await;
    }

    /// Waits until every write queued before this call is committed.
    pub async fn flush(&self) -> Result<(), Error> {
        let (done, flushed) = oneshot::channel();
        self.queue(Write::Flush(done)).await;
        flushed.await.unwrap_or(Err(Error::StorageClosed))
    }

    /// Finishes the queued writes and stops the task; later writes are dropped.
    pub(super) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        self.queue(Write::Close(done)).await;
        let _ = closed.await;
    }

    async fn queue(&self, write: Write) {
        if self.queue.send(write).await.is_err() {
            // Only after `close`, at shutdown: nothing more is stored.
            debug!("storage closed: write dropped");
        }
    }
}

/// Starts the writer task on `conn`.
pub(super) fn spawn(conn: SqliteConnection) -> Writer {
    let (queue, rx) = mpsc::channel(QUEUE);
    let task = WriterTask {
        conn,
        rx,
        broken: HashSet::new(),
    };
    tokio::spawn(task.run());
    Writer { queue }
}

struct WriterTask {
    conn: SqliteConnection,
    rx: mpsc::Receiver<Write>,
    /// Rooms whose last group failed: their events are dropped until a
    /// snapshot of the room commits, so their stored log has no hole.
    broken: HashSet<BareJid>,
}

/// A write ready for SQL: encoded and checked.
enum Op {
    Save {
        room: BareJid,
        seq: i64,
        deliver_after: i64,
        snapshot: Vec<u8>,
    },
    Log {
        room: BareJid,
        seq: i64,
        event: Vec<u8>,
    },
    DeliverAfter {
        room: BareJid,
        deliver_after: i64,
    },
    Delete {
        room: BareJid,
    },
    DeleteMaster {
        master: BareJid,
    },
    SplitBegin {
        room: BareJid,
        began: i64,
        seq: i64,
        snapshot: Vec<u8>,
    },
    SplitEvent {
        room: BareJid,
        began: i64,
        index: i64,
        at: i64,
        input: Vec<u8>,
        local_id: Option<String>,
    },
    SplitHealed {
        room: BareJid,
        began: i64,
    },
    SplitMerged {
        room: BareJid,
        began: i64,
    },
}

impl Op {
    fn room(&self) -> Option<&BareJid> {
        match self {
            Op::Save { room, .. }
            | Op::Log { room, .. }
            | Op::DeliverAfter { room, .. }
            | Op::Delete { room } => Some(room),
            // Split writes are not part of the slave's log.
            Op::DeleteMaster { .. }
            | Op::SplitBegin { .. }
            | Op::SplitEvent { .. }
            | Op::SplitHealed { .. }
            | Op::SplitMerged { .. } => None,
        }
    }
}

impl WriterTask {
    async fn run(mut self) {
        let mut group = Vec::new();
        let mut closed = Vec::new();
        while let Some(first) = self.rx.recv().await {
            group.push(first);
            while group.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(write) => group.push(write),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group, &mut closed).await;
        }
        if let Err(e) = self.conn.close().await {
            warn!(error = %e, "closing the storage writer connection failed");
        }
        debug!("storage writer stopped");
        for done in closed {
            let _ = done.send(());
        }
    }

    /// Writes `group` (leaving it empty), then resolves its flushes.
    async fn commit_group(
        &mut self,
        group: &mut Vec<Write>,
        closed: &mut Vec<oneshot::Sender<()>>,
    ) {
        let mut ops = Vec::with_capacity(group.len());
        let mut flushes = Vec::new();
        for write in group.drain(..) {
            match write {
                Write::Flush(done) => flushes.push(done),
                Write::Close(done) => {
                    // Writes already queued are still taken; later ones fail.
                    self.rx.close();
                    closed.push(done);
                }
                write => match self.encode(write) {
                    Ok(Some(op)) => ops.push(op),
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "write not stored"),
                },
            }
        }
        let result = if ops.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            match self.apply(&ops).await {
                Ok(()) => {
                    trace!(
                        writes = ops.len(),
                        micros = started.elapsed().as_micros() as u64,
                        "group committed"
                    );
                    Ok(())
                }
                Err(e) => {
                    error!(error = %e, writes = ops.len(), "group commit failed");
                    self.broken.extend(ops.iter().filter_map(Op::room).cloned());
                    Err(Arc::new(e))
                }
            }
        };
        for done in flushes {
            let _ = done.send(result.clone().map_err(Error::Storage));
        }
    }

    /// Encodes a write; `None` for an event of a room whose log is broken.
    /// A snapshot or a delete mends the room's log from there on (if its
    /// group fails, the room is marked broken again).
    fn encode(&mut self, write: Write) -> Result<Option<Op>, Error> {
        let op = match write {
            Write::Snapshot {
                seq,
                deliver_after,
                snapshot,
            } => {
                self.broken.remove(&snapshot.jid);
                Op::Save {
                    seq: to_db(seq, "seq")?,
                    deliver_after: to_db(deliver_after, "deliver_after")?,
                    snapshot: pb::RoomSnapshot::from(&*snapshot).encode_to_vec(),
                    room: snapshot.jid,
                }
            }
            Write::Event { room, seq, event } => {
                if self.broken.contains(&room) {
                    trace!(room = %room, seq, "event dropped until the next snapshot");
                    return Ok(None);
                }
                Op::Log {
                    seq: to_db(seq, "seq")?,
                    room,
                    event,
                }
            }
            Write::DeliverAfter {
                room,
                deliver_after,
            } => Op::DeliverAfter {
                room,
                deliver_after: to_db(deliver_after, "deliver_after")?,
            },
            Write::Delete { room } => {
                self.broken.remove(&room);
                Op::Delete { room }
            }
            Write::DeleteMaster { master } => Op::DeleteMaster { master },
            Write::SplitBegin { start } => Op::SplitBegin {
                began: start.began.millis(),
                seq: to_db(start.seq, "split seq")?,
                snapshot: pb::RoomSnapshot::from(&start.snapshot).encode_to_vec(),
                room: start.snapshot.jid,
            },
            Write::SplitEvent {
                room,
                began,
                index,
                event,
            } => Op::SplitEvent {
                room,
                began: began.millis(),
                index: to_db(index, "split index")?,
                at: event.now.millis(),
                input: pb::Input::from(&event.input).encode_to_vec(),
                local_id: event.local_id.map(|id| id.as_str().to_owned()),
            },
            Write::SplitHealed { room, began } => Op::SplitHealed {
                room,
                began: began.millis(),
            },
            Write::SplitMerged { room, began } => Op::SplitMerged {
                room,
                began: began.millis(),
            },
            Write::Flush(_) | Write::Close(_) => return Ok(None),
        };
        Ok(Some(op))
    }

    /// Applies `ops` in order in one transaction: all of them or, on error, none.
    async fn apply(&mut self, ops: &[Op]) -> Result<(), sqlx::Error> {
        let now = now_millis();
        let mut tx = self.conn.begin().await?;
        // Consecutive log rows, inserted together before any other statement.
        let mut rows: Vec<(&BareJid, i64, &[u8])> = Vec::new();
        for op in ops {
            if !matches!(op, Op::Log { .. }) && !rows.is_empty() {
                insert_events(&mut tx, &rows).await?;
                rows.clear();
            }
            match op {
                Op::Log { room, seq, event } => rows.push((room, *seq, event)),
                Op::Save {
                    room,
                    seq,
                    deliver_after,
                    snapshot,
                } => {
                    sqlx::query(
                        "INSERT INTO slaves (room, master, seq, deliver_after, snapshot, saved_at) \
                         VALUES (?, ?, ?, ?, ?, ?) \
                         ON CONFLICT (room) DO UPDATE SET master = excluded.master, \
                         seq = excluded.seq, deliver_after = excluded.deliver_after, \
                         snapshot = excluded.snapshot, saved_at = excluded.saved_at",
                    )
                    .bind(room.as_str())
                    .bind(room.domain().as_str())
                    .bind(seq)
                    .bind(deliver_after)
                    .bind(snapshot)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    // Every event stored so far is in the snapshot (writes
                    // come in order); events of an older slave are stale.
                    sqlx::query("DELETE FROM events WHERE room = ?")
                        .bind(room.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                Op::DeliverAfter {
                    room,
                    deliver_after,
                } => {
                    sqlx::query("UPDATE slaves SET deliver_after = ? WHERE room = ?")
                        .bind(deliver_after)
                        .bind(room.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                Op::Delete { room } => {
                    sqlx::query("DELETE FROM events WHERE room = ?")
                        .bind(room.as_str())
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM slaves WHERE room = ?")
                        .bind(room.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                Op::DeleteMaster { master } => {
                    sqlx::query(
                        "DELETE FROM events WHERE room IN (SELECT room FROM slaves WHERE master = ?)",
                    )
                    .bind(master.as_str())
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM slaves WHERE master = ?")
                        .bind(master.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                Op::SplitBegin {
                    room,
                    began,
                    seq,
                    snapshot,
                } => {
                    sqlx::query(
                        "INSERT OR REPLACE INTO splits (room, began, master, seq, snapshot, healed) \
                         VALUES (?, ?, ?, ?, ?, 0)",
                    )
                    .bind(room.as_str())
                    .bind(began)
                    .bind(room.domain().as_str())
                    .bind(seq)
                    .bind(snapshot)
                    .execute(&mut *tx)
                    .await?;
                }
                Op::SplitEvent {
                    room,
                    began,
                    index,
                    at,
                    input,
                    local_id,
                } => {
                    sqlx::query(
                        "INSERT OR REPLACE INTO split_events (room, began, idx, at, input, local_id) \
                         VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .bind(room.as_str())
                    .bind(began)
                    .bind(index)
                    .bind(at)
                    .bind(input)
                    .bind(local_id)
                    .execute(&mut *tx)
                    .await?;
                }
                Op::SplitHealed { room, began } => {
                    sqlx::query("UPDATE splits SET healed = 1 WHERE room = ? AND began = ?")
                        .bind(room.as_str())
                        .bind(began)
                        .execute(&mut *tx)
                        .await?;
                }
                Op::SplitMerged { room, began } => {
                    sqlx::query("DELETE FROM split_events WHERE room = ? AND began = ?")
                        .bind(room.as_str())
                        .bind(began)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM splits WHERE room = ? AND began = ?")
                        .bind(room.as_str())
                        .bind(began)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        insert_events(&mut tx, &rows).await?;
        tx.commit().await
    }
}

/// Inserts log rows with as few statements as possible.
async fn insert_events(
    conn: &mut SqliteConnection,
    rows: &[(&BareJid, i64, &[u8])],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert =
            QueryBuilder::<Sqlite>::new("INSERT OR REPLACE INTO events (room, seq, event) ");
        insert.push_values(chunk, |mut row, (room, seq, event)| {
            row.push_bind(room.as_str())
                .push_bind(*seq)
                .push_bind(*event);
        });
        // Not cached: the text varies with the row count.
        insert.build().persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
