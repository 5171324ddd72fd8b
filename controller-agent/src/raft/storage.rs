//! The raft log and the replicated state machine, on disk in one redb file
//! (`<data_dir>/store/raft.redb`). Every write is a redb transaction
//! committed with `Durability::Immediate` (fsynced) before openraft is told
//! it happened; all of them run on the blocking pool.
//!
//! The state machine is small (the configuration, the journal, the
//! history): it is kept whole in memory and made durable as a snapshot
//! (every 500 entries, fsynced, with the last applied log id and the
//! membership). The log after the snapshot is durable (every entry is
//! fsynced on a majority before it is applied), so after a crash openraft
//! applies it again onto the snapshot: applying is never on the disk's
//! path. Commands are whole values, so applying one again gives the same
//! state.

// The error type is openraft's `StorageError`, fixed by its traits.
#![allow(clippy::result_large_err)]

use std::{io::Cursor, ops::RangeBounds, sync::Arc};

use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
    storage::{LogFlushed, RaftLogStorage, RaftStateMachine},
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Change, Member, Replicated, TypeConfig};

type Nid = u64;
type SErr = StorageError<Nid>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Opens (creates) the raft database.
pub fn open(path: &std::path::Path) -> Result<Arc<Database>, redb::DatabaseError> {
    let db = Database::create(path)?;
    Ok(Arc::new(db))
}

fn io_err(what: &str, e: impl std::fmt::Display) -> SErr {
    StorageIOError::write(AnyError::error(format!("{what}: {e}"))).into()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, SErr> + Send + 'static) -> Result<T, SErr> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io_err("storage task", e))?
}

fn get_meta<T: for<'a> Deserialize<'a>>(db: &Database, key: &str) -> Result<Option<T>, SErr> {
    let r = db.begin_read().map_err(|e| io_err("read", e))?;
    let t = match r.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(io_err("open meta", e)),
    };
    match t.get(key).map_err(|e| io_err("read meta", e))? {
        Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(|e| io_err(key, e)),
        None => Ok(None),
    }
}

/// Writes `f`'s changes in one fsynced transaction.
fn write_txn(db: &Database, f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>) -> Result<(), SErr> {
    let w = db.begin_write().map_err(|e| io_err("begin", e))?;
    f(&w).map_err(|e| io_err("write", e))?;
    w.commit().map_err(|e| io_err("commit", e))
}

fn put_meta(w: &redb::WriteTransaction, key: &str, v: &impl Serialize) -> Result<(), redb::Error> {
    let bytes = serde_json::to_vec(v).expect("serializes");
    w.open_table(META)?.insert(key, bytes.as_slice())?;
    Ok(())
}

/// The raft log.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// The log in `db`.
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let db = self.db.clone();
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        blocking(move || {
            let r = db.begin_read().map_err(|e| io_err("read", e))?;
            let t = match r.open_table(LOG) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
                Err(e) => return Err(io_err("open log", e)),
            };
            let mut out = vec![];
            for item in t.range::<u64>((start, end)).map_err(|e| io_err("read log", e))? {
                let (_, v) = item.map_err(|e| io_err("read log", e))?;
                out.push(serde_json::from_slice(v.value()).map_err(|e| io_err("log entry", e))?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let db = self.db.clone();
        blocking(move || {
            let purged: Option<LogId<Nid>> = get_meta(&db, "purged")?;
            let r = db.begin_read().map_err(|e| io_err("read", e))?;
            let last = match r.open_table(LOG) {
                Ok(t) => match t.last().map_err(|e| io_err("read log", e))? {
                    Some((_, v)) => {
                        let e: Entry<TypeConfig> =
                            serde_json::from_slice(v.value()).map_err(|e| io_err("log entry", e))?;
                        Some(e.log_id)
                    }
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(io_err("open log", e)),
            };
            Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<Nid>) -> Result<(), SErr> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || write_txn(&db, |w| put_meta(w, "vote", &vote))).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<Nid>>, SErr> {
        let db = self.db.clone();
        blocking(move || get_meta(&db, "vote")).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let db = self.db.clone();
        let entries: Vec<(u64, Vec<u8>)> =
            entries.into_iter().map(|e| (e.log_id.index, serde_json::to_vec(&e).expect("serializes"))).collect();
        let r = blocking(move || {
            write_txn(&db, |w| {
                let mut t = w.open_table(LOG)?;
                for (i, bytes) in &entries {
                    t.insert(*i, bytes.as_slice())?;
                }
                Ok(())
            })
        })
        .await;
        callback.log_io_completed(r.clone().map_err(std::io::Error::other));
        r
    }

    async fn truncate(&mut self, log_id: LogId<Nid>) -> Result<(), SErr> {
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, |w| {
                w.open_table(LOG)?.retain_in(log_id.index.., |_, _| false)?;
                Ok(())
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<Nid>) -> Result<(), SErr> {
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, |w| {
                w.open_table(LOG)?.retain_in(..=log_id.index, |_, _| false)?;
                put_meta(w, "purged", &log_id)
            })
        })
        .await
    }
}

/// What the state machine persists: the replicated data and how far the
/// log has been applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The last log entry applied.
    pub last_applied: Option<LogId<Nid>>,
    /// The membership in force.
    pub membership: StoredMembership<Nid, Member>,
    /// The data.
    pub data: Replicated,
}

/// The replicated state machine.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    state: Arc<std::sync::Mutex<Applied>>,
    /// Every applied state, for the controller's readers.
    tx: Arc<watch::Sender<Arc<Replicated>>>,
    /// The configuration to mirror for operators (`store/config.json`),
    /// written by a task of its own, off the write path.
    mirror: Arc<watch::Sender<Option<crate::leader::store::Config>>>,
}

impl StateMachine {
    /// The state machine in `db`, as last applied.
    pub fn open(db: Arc<Database>, store: crate::leader::store::Store) -> Result<Self, SErr> {
        // The last snapshot: the log after it is applied again by openraft.
        let state = match get_meta::<SnapshotMeta<Nid, Member>>(&db, "snapshot_meta")? {
            Some(meta) => {
                let r = db.begin_read().map_err(|e| io_err("read", e))?;
                let t = r.open_table(META).map_err(|e| io_err("open meta", e))?;
                let bytes = t.get("snapshot_data").map_err(|e| io_err("read snapshot", e))?;
                let data: Replicated = match bytes {
                    Some(b) => serde_json::from_slice(b.value()).map_err(|e| io_err("snapshot", e))?,
                    None => Replicated::default(),
                };
                Applied { last_applied: meta.last_log_id, membership: meta.last_membership, data }
            }
            None => Applied::default(),
        };
        let tx = Arc::new(watch::channel(Arc::new(state.data.clone())).0);
        let (mirror, mut rx) = watch::channel(state.data.config.clone());
        // The copy operators read with cat: the latest configuration applied,
        // written whole (atomically) whenever it changes; the database is
        // the truth, so this is never on the write path.
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(c) = rx.borrow_and_update().clone() else { continue };
                let store = store.clone();
                let saved = tokio::task::spawn_blocking(move || store.save("config", &c)).await;
                if let Err(e) = saved.map_err(std::io::Error::other).and_then(|r| r) {
                    tracing::warn!(error = %e, "cannot mirror the configuration to store/config.json");
                }
            }
        });
        Ok(Self { db, state: Arc::new(std::sync::Mutex::new(state)), tx, mirror: Arc::new(mirror) })
    }

    /// Follows every applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Replicated>> {
        self.tx.subscribe()
    }

    /// Installs the applied state in memory and tells the readers.
    fn install(&self, next: Applied, config_changed: bool) {
        if config_changed {
            self.mirror.send_replace(next.data.config.clone());
        }
        let data = Arc::new(next.data.clone());
        *self.state.lock().expect("sm lock") = next;
        self.tx.send_replace(data);
    }

    fn snapshot_of(a: &Applied) -> Snapshot<TypeConfig> {
        let id = a.last_applied.map(|l| format!("{}-{}", l.leader_id.term, l.index)).unwrap_or_else(|| "0-0".into());
        Snapshot {
            meta: SnapshotMeta { last_log_id: a.last_applied, last_membership: a.membership.clone(), snapshot_id: id },
            snapshot: Box::new(Cursor::new(serde_json::to_vec(&a.data).expect("serializes"))),
        }
    }
}

/// Applies one command to the data.
pub fn apply_change(data: &mut Replicated, change: Change) {
    match change {
        Change::Config(c) => data.config = Some(c),
        Change::Journal(j) => {
            let ended = data.journal.as_ref().is_some_and(|c| c.id == j.id && c.is_running()) && !j.is_running();
            if ended {
                data.history.push(coordinator::view::history_entry(&j));
                let over = data.history.len().saturating_sub(crate::raft::HISTORY_KEPT);
                data.history.drain(..over);
            }
            data.journal = Some(j);
        }
        Change::Image { path, sha256 } => {
            data.images.insert(path, sha256);
        }
        Change::Audit(entry) => match data.audit.last_mut() {
            Some(last) if last.folds(&entry) => {
                last.count = last.count.saturating_add(entry.count);
                last.at = entry.at;
            }
            _ => {
                data.audit.push(entry);
                let over = data.audit.len().saturating_sub(crate::raft::AUDIT_KEPT);
                data.audit.drain(..over);
            }
        },
        Change::Seed(seed) => {
            if data.config.is_none() {
                *data = seed;
                data.config.get_or_insert_default();
            }
        }
    }
}

/// Makes a snapshot durable: its meta and data in one fsynced transaction.
async fn save_snapshot(db: &Arc<Database>, meta: SnapshotMeta<Nid, Member>, data: Vec<u8>) -> Result<(), SErr> {
    let db = db.clone();
    blocking(move || {
        write_txn(&db, |w| {
            put_meta(w, "snapshot_meta", &meta)?;
            w.open_table(META)?.insert("snapshot_data", data.as_slice())?;
            Ok(())
        })
    })
    .await
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let a = self.state.lock().expect("sm lock").clone();
        let snap = Self::snapshot_of(&a);
        save_snapshot(&self.db, snap.meta.clone(), serde_json::to_vec(&a.data).expect("serializes")).await?;
        Ok(snap)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<Nid>>, StoredMembership<Nid, Member>), SErr> {
        let a = self.state.lock().expect("sm lock");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut next = self.state.lock().expect("sm lock").clone();
        let before = next.data.config.clone();
        let mut out = vec![];
        for e in entries {
            next.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(change) => apply_change(&mut next.data, change),
                EntryPayload::Membership(m) => next.membership = StoredMembership::new(Some(e.log_id), m),
            }
            out.push(());
        }
        let changed = next.data.config != before;
        self.install(next, changed);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<Nid, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        let data: Replicated = serde_json::from_slice(&bytes).map_err(|e| io_err("snapshot", e))?;
        let next = Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), data };
        save_snapshot(&self.db, meta.clone(), bytes).await?;
        self.install(next, true);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let db = self.db.clone();
        blocking(move || {
            let Some(meta) = get_meta::<SnapshotMeta<Nid, Member>>(&db, "snapshot_meta")? else { return Ok(None) };
            let r = db.begin_read().map_err(|e| io_err("read", e))?;
            let t = r.open_table(META).map_err(|e| io_err("open meta", e))?;
            let data = t
                .get("snapshot_data")
                .map_err(|e| io_err("read snapshot", e))?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coordinator::journal::{Outcome, Phase};

    use crate::raft::{AUDIT_KEPT, AuditEntry};

    fn entry(who: &str, action: &str, status: u16) -> AuditEntry {
        AuditEntry {
            at: 1.0,
            who: who.into(),
            role: "read-only".into(),
            action: action.into(),
            status,
            count: 1,
            body_sha256: None,
            gates: None,
        }
    }

    /// Issue 25, 7: the history (replicated, kept by every controller) had
    /// no bound.
    #[test]
    fn the_history_keeps_the_last_operations_only() {
        let mut data = Replicated::default();
        for i in 0..crate::raft::HISTORY_KEPT + 30 {
            let mut j = coordinator::sim::sample_journal(1, &[]);
            j.id = format!("op{i}");
            apply_change(&mut data, Change::Journal(j.clone()));
            j.reason = "x\n".repeat(10_000);
            (j.phase, j.outcome, j.ended) = (Phase::Done, Some(Outcome::Aborted), Some(2));
            apply_change(&mut data, Change::Journal(j));
        }
        assert_eq!(data.history.len(), crate::raft::HISTORY_KEPT);
        assert!(data.history.iter().all(|h| h.reason.len() <= 4096 && !h.reason.contains('\n')));
    }

    /// Issue 25, 6: 1,050 refused calls of a read-only token pushed every
    /// admin entry out of the trail. Repeated refusals fold into one entry.
    #[test]
    fn repeated_refusals_are_counted_in_one_entry_and_push_nothing_out() {
        let mut data = Replicated::default();
        apply_change(
            &mut data,
            Change::Audit(AuditEntry { role: "admin".into(), ..entry("admin", "POST /api/cluster/upgrade", 202) }),
        );
        for _ in 0..AUDIT_KEPT * 3 {
            apply_change(&mut data, Change::Audit(entry("noc", "POST /api/cluster/upgrade/pause", 403)));
        }
        assert_eq!(data.audit.len(), 2, "{:?}", data.audit);
        assert_eq!(data.audit[0].who, "admin", "the admin's entry is kept");
        assert_eq!(data.audit[1].count as usize, AUDIT_KEPT * 3);
        // Another action, or a success, is an entry of its own.
        apply_change(&mut data, Change::Audit(entry("noc", "POST /api/virtualservice", 403)));
        apply_change(&mut data, Change::Audit(entry("noc", "POST /api/virtualservice", 403)));
        apply_change(
            &mut data,
            Change::Audit(AuditEntry { role: "admin".into(), ..entry("admin", "POST /api/virtualservice", 201) }),
        );
        apply_change(
            &mut data,
            Change::Audit(AuditEntry { role: "admin".into(), ..entry("admin", "POST /api/virtualservice", 201) }),
        );
        let counts: Vec<u32> = data.audit.iter().map(|e| e.count).collect();
        assert_eq!(counts, vec![1, AUDIT_KEPT as u32 * 3, 2, 1, 1]);
    }
}
