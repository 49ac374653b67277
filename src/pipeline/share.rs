//! Shared workers: several daemons on one database split the sources among themselves through
//! leases, and take over the share of one that stops.
//!
//! The sources are cut into [`SLICES`] slices by a hash of their id. Each slice has a lease, an
//! ordinary document of the database (`rdshare!lease!NN`: `{owner, seq}`), and the workers
//! list themselves in a roster (`rdshare!workers`: `{worker id: beat}`). Every few seconds
//! (a third of the lease timeout) each worker reads them all (one request), and writes in one
//! request its beat, the leases it holds (renewed: a new revision), the ones it claims and the
//! ones it gives up. Every write is revision-checked, so of two workers claiming one lease one
//! wins; CouchDB's `_local` documents, which are not, are not used. There is no coordinator.
//!
//! Time is never compared across machines: a lease is taken to be abandoned when its revision
//! has not changed for the timeout *as this worker observed it*. Its holder, meanwhile, stops
//! taking its slices once it has not renewed them for two thirds of the timeout — a worker cut
//! off from the database stops before anyone else starts.
//!
//! Each worker aims at its fair share — the slices divided by the live workers (those whose
//! beat changed within the timeout), rounded up: it claims free or abandoned leases up to it and
//! gives up what it holds beyond it, so a worker that joins gets a share and the slices of one
//! that left are taken.
//!
//! A lease carries `seq`, a position of the feed from which reading is sure to miss nothing of
//! its slice: the holder writes there its own checkpoint (what it has written) for the slices it
//! has processed all along. Sequences are opaque — they cannot be compared — so a worker that
//! claims a slice does not move its own position: it runs a *catch-up* over that slice alone
//! from the lease's `seq` to the end of the feed, beside its main run from its own checkpoint;
//! between them every change of the slice is read, and the state records skip what another
//! worker already did. Until its catch-up ends, a slice's lease keeps the `seq` it was claimed
//! with.
//!
//! The later_handlers run on one worker only: the holder of slice [`LATER_SLICE`] (its main
//! run). The others leave their `process_later` values in the shared queue (see
//! `later::SHARED_PREFIX`), so a worker that goes leaves none behind, and whoever takes that
//! slice next runs what is waiting.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{PipelineError, RunOptions, Stats};
use crate::store::{Doc, Seq, Store, StoreError, WriteResult};

/// How many slices the sources are cut into (each a bit of [`Held`]).
pub const SLICES: u64 = 16;
/// The slice whose holder runs the later_handlers of all the workers.
pub const LATER_SLICE: u64 = 0;
/// Prefix of the lease and roster documents.
pub(super) const SHARE_PREFIX: &str = "rdshare!";
const ROSTER_ID: &str = "rdshare!workers";

fn lease_id(slice: u64) -> String {
    format!("{SHARE_PREFIX}lease!{slice:02}")
}

/// The slice of source `id`.
pub(super) fn slice_of(id: &str) -> u64 {
    super::source::id_hash(id) % SLICES
}

/// The checkpoint of worker `worker`'s main run.
pub fn checkpoint_of(worker: &str) -> String {
    format!("raindrop-share-{worker}")
}

/// The checkpoint of worker `worker`'s `n`th catch-up (from 1): a worker's id is new at each
/// start, so no two catch-ups share one.
pub fn catch_up_checkpoint(worker: &str, n: u64) -> String {
    format!("{}-catch-up-{n}", checkpoint_of(worker))
}

/// The slices a run takes: one bit each, changed by the lease thread while the run goes on.
#[derive(Debug, Default)]
pub struct Held {
    mask: AtomicU64,
    /// A worker's main run, which runs the later_handlers while it holds [`LATER_SLICE`]
    /// (a catch-up never does).
    main: bool,
}

impl Held {
    fn of(mask: u64) -> Held {
        Held { mask: AtomicU64::new(mask), main: false }
    }

    /// Whether the run runs the later_handlers of all the workers now.
    pub(super) fn runs_later(&self) -> bool {
        self.main && self.mask.load(Ordering::Acquire) & (1 << LATER_SLICE) != 0
    }

    /// Whether source `id` is in one of the held slices.
    pub(super) fn takes(&self, id: &str) -> bool {
        self.mask.load(Ordering::Acquire) & (1 << slice_of(id)) != 0
    }
}

/// A slice claimed from someone else, to be read from `since` (`None`: the feed's start).
#[derive(Debug, Clone)]
pub struct CatchUp {
    pub slices: u64,
    pub since: Option<String>,
    /// Its checkpoint, the same for every attempt: a retry resumes where the last one stopped.
    pub checkpoint: String,
}

/// What the lease thread keeps between rounds.
#[derive(Default)]
struct Leases {
    /// Lease id → (its revision, when this worker first saw that revision).
    seen: HashMap<String, (String, Instant)>,
    /// Worker → (its beat, when first seen at that beat).
    beats: HashMap<String, (u64, Instant)>,
    /// Slice → the revision this worker wrote it at (its holding).
    mine: BTreeMap<u64, String>,
    /// Slices claimed whose catch-up has not ended: their lease keeps this `seq`.
    catching_up: BTreeMap<u64, Option<String>>,
    beat: u64,
    /// The last round whose renewal the database accepted.
    renewed: Option<Instant>,
    pending: Vec<CatchUp>,
    /// Catch-ups made so far: the number in the next one's checkpoint.
    catch_ups: u64,
    /// Checkpoints of catch-ups given up unfinished (their slices lost): deleted on leaving.
    abandoned: Vec<String>,
    /// The slices of the catch-ups given out, narrowed as their leases are lost.
    catch_up_helds: Vec<std::sync::Weak<Held>>,
    rounds: u64,
}

/// This worker's part in the sharing: its id, what it holds, and the lease thread.
pub struct Share {
    id: String,
    store: Arc<dyn Store>,
    timeout: Duration,
    held: Arc<Held>,
    leases: Mutex<Leases>,
    /// Raised when slices were claimed: the main run ends at a page boundary so the catch-ups
    /// can run.
    claimed: Arc<AtomicBool>,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Share {
    /// Joins the workers of `store` (leases timing out after `timeout`) and starts the lease
    /// thread; `claimed` is raised whenever slices are claimed.
    pub fn start(store: Arc<dyn Store>, timeout: Duration, claimed: Arc<AtomicBool>) -> std::io::Result<Arc<Share>> {
        let share = Arc::new(Share {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            store,
            timeout,
            held: Arc::new(Held { mask: AtomicU64::new(0), main: true }),
            leases: Mutex::default(),
            claimed,
            stop: AtomicBool::new(false),
            thread: Mutex::default(),
        });
        let thread = share.clone();
        let handle = std::thread::Builder::new().name("leases".into()).spawn(move || thread.lease_loop())?;
        *share.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(share)
    }

    /// This worker's id (its checkpoint is [`checkpoint_of`] it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The slices the main run takes.
    pub fn held(&self) -> Arc<Held> {
        self.held.clone()
    }

    /// The catch-ups claimed since the last call, each with a [`Held`] of its slices.
    pub fn take_catch_ups(&self) -> Vec<(CatchUp, Arc<Held>)> {
        let mut l = self.lock();
        let pending = std::mem::take(&mut l.pending);
        let mine = l.mine_mask();
        pending
            .into_iter()
            .map(|c| {
                let held = Arc::new(Held::of(c.slices & mine));
                l.catch_up_helds.push(Arc::downgrade(&held));
                (c, held)
            })
            .collect()
    }

    /// `catch_up` ran to the end of the feed: its slices' leases now carry this worker's
    /// checkpoint.
    pub fn caught_up(&self, catch_up: &CatchUp) {
        let mut l = self.lock();
        for k in (0..SLICES).filter(|k| catch_up.slices & (1 << k) != 0) {
            l.catching_up.remove(&k);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lease_loop(&self) {
        let round = (self.timeout / 3).max(Duration::from_millis(100));
        while !self.stop.load(Ordering::Acquire) {
            if let Err(e) = self.round() {
                tracing::warn!(worker = %self.id, "the leases could not be read or renewed: {e}");
            }
            self.fence();
            let until = Instant::now() + round;
            while Instant::now() < until && !self.stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50).min(round));
            }
        }
    }

    /// A holder that could not renew for two thirds of the timeout takes nothing more: the
    /// others will soon think its leases abandoned.
    fn fence(&self) {
        let mut l = self.lock();
        let stale = l.renewed.is_none_or(|t| t.elapsed() > self.timeout * 2 / 3);
        if stale && !l.mine.is_empty() {
            tracing::warn!(worker = %self.id, slices = l.mine.len(), "leases not renewed in time: their slices are left to the others");
            l.mine.clear();
            l.catching_up.clear();
            let dropped: Vec<String> = l.pending.drain(..).map(|c| c.checkpoint).collect();
            l.abandoned.extend(dropped);
            l.narrow(&self.held);
        }
    }

    /// The leases and the roster (the roster last), and this worker's checkpoint position.
    fn read_leases(&self) -> Result<(Vec<Option<Doc>>, Option<String>), StoreError> {
        let ids: Vec<String> = (0..SLICES).map(lease_id).chain([ROSTER_ID.to_string()]).collect();
        let docs = self.store.get_docs(&ids)?;
        let local = self.store.get_local(&checkpoint_of(&self.id))?;
        Ok((docs, local.as_ref().and_then(|c| c.get("seq")).and_then(Value::as_str).map(str::to_string)))
    }

    /// One round: read the leases and the roster, then write this worker's beat and its
    /// leases — renewed, claimed or given up — in one request.
    fn round(&self) -> Result<(), StoreError> {
        let (docs, checkpoint) = self.read_leases()?;
        let mut l = self.lock();
        l.rounds += 1;
        let now = Instant::now();
        let roster = docs[SLICES as usize].clone();
        let live = self.observe_roster(&mut l, roster.as_ref(), now);
        let target = SLICES.div_ceil(live.len() as u64) as usize;
        let mut renew = Vec::new();
        let mut claimable = Vec::new();
        for k in 0..SLICES {
            let lease = Lease::of(docs[k as usize].as_ref());
            let unchanged_for = l.observe(&lease_id(k), lease.rev.as_deref(), now);
            if lease.owner.as_deref() == Some(self.id.as_str()) && l.mine.get(&k) == lease.rev.as_ref() {
                renew.push((k, lease));
                continue;
            }
            if l.mine.remove(&k).is_some() {
                tracing::warn!(worker = %self.id, slice = k, "lease taken by another worker");
                l.catching_up.remove(&k);
            }
            // The first round only enters this worker in the roster: workers starting together
            // then divide the slices by the right number.
            if l.rounds > 1 && (lease.owner.is_none() || unchanged_for >= self.timeout) {
                claimable.push((k, lease));
            }
        }
        let release = if renew.len() > target { renew.split_off(target) } else { Vec::new() };
        let claims: Vec<(u64, Lease)> = claimable.into_iter().take(target.saturating_sub(renew.len())).collect();
        // What is given up is not taken any more from now on.
        self.held.mask.fetch_and(!release.iter().fold(0, |m, (k, _)| m | 1 << k), Ordering::AcqRel);
        let seq_of = |l: &Leases, k: u64| match l.catching_up.get(&k) {
            Some(seq) => seq.clone(),
            None => checkpoint.clone(),
        };
        let mut writes = vec![self.roster_doc(&mut l, roster.as_ref(), &live, true)];
        for (k, lease) in &renew {
            writes.push(lease.written(k, Some(&self.id), seq_of(&l, *k)));
        }
        for (k, lease) in &claims {
            writes.push(lease.written(k, Some(&self.id), lease.seq.clone()));
        }
        for (k, lease) in &release {
            writes.push(lease.written(k, None, seq_of(&l, *k)));
        }
        let results = match self.store.bulk_write(writes) {
            Ok(results) => results,
            Err(e) => {
                // Nothing given up after all: what is held is taken again.
                l.narrow(&self.held);
                return Err(e);
            }
        };
        l.renewed = Some(now);
        self.settle(&mut l, results, &renew, &claims, &release);
        Ok(())
    }

    /// Takes in the answers to a round's write (the roster's first, then `renew`, `claims`
    /// and `release`, in order): what is held now, and the catch-ups of what was claimed.
    fn settle(&self, l: &mut Leases, results: Vec<WriteResult>, renew: &[(u64, Lease)], claims: &[(u64, Lease)], release: &[(u64, Lease)]) {
        let mut results = results.into_iter().skip(1);
        for (k, _) in renew {
            match results.next() {
                Some(WriteResult::Ok { rev, .. }) => {
                    l.mine.insert(*k, rev);
                }
                _ => {
                    l.mine.remove(k);
                    l.catching_up.remove(k);
                }
            }
        }
        let mut claimed: BTreeMap<Option<String>, CatchUp> = BTreeMap::new();
        for (k, lease) in claims {
            if let Some(WriteResult::Ok { rev, .. }) = results.next() {
                l.mine.insert(*k, rev);
                l.catching_up.insert(*k, lease.seq.clone());
                let c = claimed.entry(lease.seq.clone()).or_insert_with(|| {
                    l.catch_ups += 1;
                    CatchUp { slices: 0, since: lease.seq.clone(), checkpoint: catch_up_checkpoint(&self.id, l.catch_ups) }
                });
                c.slices |= 1 << k;
            }
        }
        for (k, _) in release {
            l.mine.remove(k);
            l.catching_up.remove(k);
        }
        l.narrow(&self.held);
        if !claimed.is_empty() {
            tracing::info!(worker = %self.id, slices = ?claimed.values().map(|c| c.slices).collect::<Vec<_>>(), "claimed slices");
            l.pending.extend(claimed.into_values());
            self.claimed.store(true, Ordering::SeqCst);
        }
    }

    /// The roster as this worker writes it: the live workers' beats, its own moved on (or
    /// gone, when `present` is false).
    fn roster_doc(&self, l: &mut Leases, read: Option<&Doc>, live: &[String], present: bool) -> Doc {
        let mut doc = Map::new();
        doc.insert("_id".into(), json!(ROSTER_ID));
        if let Some(rev) = read.and_then(|d| d.get("_rev")) {
            doc.insert("_rev".into(), rev.clone());
        }
        for w in live.iter().filter(|w| *w != &self.id) {
            if let Some(beat) = read.and_then(|d| d.get(w.as_str())) {
                doc.insert(w.clone(), beat.clone());
            }
        }
        l.beat += 1;
        if present {
            doc.insert(self.id.clone(), json!(l.beat));
        }
        doc
    }

    /// Notes the roster's beats; the live workers, this one first.
    fn observe_roster(&self, l: &mut Leases, roster: Option<&Doc>, now: Instant) -> Vec<String> {
        let mut live = vec![self.id.clone()];
        for (worker, beat) in roster.into_iter().flatten().filter(|(k, _)| !k.starts_with('_')) {
            let beat = beat.as_u64().unwrap_or(0);
            let fresh = match l.beats.get(worker) {
                Some((b, at)) if *b == beat => now - *at < self.timeout,
                _ => {
                    l.beats.insert(worker.clone(), (beat, now));
                    true
                }
            };
            if fresh && worker != &self.id {
                live.push(worker.clone());
            }
        }
        live
    }

    /// Gives up every lease (with the position its slice is processed to) and leaves the
    /// roster, so the others take over at once instead of after the timeout. The values it
    /// left in the shared queue are run by whoever holds [`LATER_SLICE`] next.
    pub fn leave(&self) {
        self.stop.store(true, Ordering::Release);
        // A round under way ends first: it could claim back what is given up here.
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
        self.held.mask.store(0, Ordering::Release);
        let result = (|| -> Result<(), StoreError> {
            let (docs, checkpoint) = self.read_leases()?;
            let mut l = self.lock();
            let live = self.observe_roster(&mut l, docs[SLICES as usize].as_ref(), Instant::now());
            let mut writes = vec![self.roster_doc(&mut l, docs[SLICES as usize].as_ref(), &live, false)];
            for (k, rev) in std::mem::take(&mut l.mine) {
                let lease = Lease::of(docs[k as usize].as_ref());
                if lease.rev.as_ref() == Some(&rev) {
                    let seq = l.catching_up.get(&k).cloned().unwrap_or_else(|| checkpoint.clone());
                    writes.push(lease.written(&k, None, seq));
                }
            }
            self.store.bulk_write(writes)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(worker = %self.id, "could not give up the leases ({e}): the others take them after the timeout");
        }
        // The next start is a new worker with a checkpoint of its own, and whoever takes these
        // slices goes on from their leases' positions: this worker's checkpoints are read no
        // more — its main run's, and those of catch-ups stopped or given up before their end.
        let unfinished: Vec<String> = {
            let mut l = self.lock();
            let mut ids: Vec<String> = l.pending.drain(..).map(|c| c.checkpoint).collect();
            ids.append(&mut l.abandoned);
            ids
        };
        for id in std::iter::once(checkpoint_of(&self.id)).chain(unfinished) {
            if let Err(e) = self.store.delete_local(&id) {
                tracing::warn!(worker = %self.id, checkpoint = %id, "could not delete a checkpoint no run will read: {e}");
            }
        }
    }
}

impl Leases {
    fn mine_mask(&self) -> u64 {
        self.mine.keys().fold(0, |m, k| m | 1 << k)
    }

    /// The main run and the catch-ups take what is held now, and nothing else.
    fn narrow(&mut self, held: &Held) {
        let mine = self.mine_mask();
        held.mask.store(mine, Ordering::Release);
        self.catch_up_helds.retain(|h| match h.upgrade() {
            Some(h) => {
                h.mask.fetch_and(mine, Ordering::AcqRel);
                true
            }
            None => false,
        });
    }

    /// How long `id` has been at revision `rev` as this worker saw it (zero when it just
    /// changed, or has none).
    fn observe(&mut self, id: &str, rev: Option<&str>, now: Instant) -> Duration {
        let Some(rev) = rev else { return Duration::ZERO };
        match self.seen.get(id) {
            Some((seen, at)) if seen == rev => now - *at,
            _ => {
                self.seen.insert(id.to_string(), (rev.to_string(), now));
                Duration::ZERO
            }
        }
    }
}

/// A lease document as read.
#[derive(Debug, Clone, Default)]
struct Lease {
    rev: Option<String>,
    owner: Option<String>,
    seq: Option<String>,
}

impl Lease {
    fn of(doc: Option<&Doc>) -> Lease {
        let text = |name: &str| doc.and_then(|d| d.get(name)).and_then(Value::as_str).map(str::to_string);
        Lease { rev: text("_rev"), owner: text("owner"), seq: text("seq") }
    }

    /// The lease of slice `k` written over this one: held by `owner` (none: free), its slice
    /// processed up to `seq`.
    fn written(&self, k: &u64, owner: Option<&str>, seq: Option<String>) -> Doc {
        let mut doc = Map::new();
        doc.insert("_id".into(), json!(lease_id(*k)));
        if let Some(rev) = &self.rev {
            doc.insert("_rev".into(), json!(rev));
        }
        doc.insert("owner".into(), json!(owner));
        doc.insert("seq".into(), json!(seq));
        doc
    }
}

/// A catch-up's start: the lease's position, or the feed's start.
fn since_of(catch_up: &CatchUp) -> Seq {
    catch_up.since.clone().map(Seq::from_raw).unwrap_or_else(Seq::zero)
}

impl Share {
    /// A catch-up that did not end: tried again before the next main run.
    fn retry(&self, catch_up: CatchUp) {
        self.lock().pending.push(catch_up);
    }
}

impl super::Pipeline {
    /// Runs the catch-ups of the slices `share` claimed since the last call, each over its
    /// slices from its lease's position to the end of the feed (`base` gives the page size and
    /// such). `base.stop` stops
    /// them at a page boundary, as it stops a main run: a catch-up stopped is taken up again
    /// from its own checkpoint by the next call.
    pub fn catch_up(&self, share: &Share, base: &RunOptions, progress: &mut (dyn FnMut(&Stats) + Send)) -> Result<Stats, PipelineError> {
        let mut total = Stats::default();
        let mut pending = share.take_catch_ups().into_iter();
        while let Some((catch_up, held)) = pending.next() {
            let checkpoint = catch_up.checkpoint.clone();
            let resumed = match self.store.get_local(&checkpoint) {
                Ok(found) => found.is_some(),
                Err(e) => {
                    share.retry(catch_up);
                    pending.for_each(|(c, _)| share.retry(c));
                    return Err(e.into());
                }
            };
            let options = RunOptions {
                continuous: false,
                until: None,
                worker: None,
                share: Some(held),
                checkpoint: Some(checkpoint.clone()),
                start: (!resumed).then(|| since_of(&catch_up)),
                ..base.clone()
            };
            match self.run(&options, &mut *progress) {
                Ok(stats) if base.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) => {
                    // Stopped before the feed's end: not caught up yet.
                    total.add(&stats);
                    share.retry(catch_up);
                    pending.for_each(|(c, _)| share.retry(c));
                    return Ok(total);
                }
                Ok(stats) => {
                    total.add(&stats);
                    share.caught_up(&catch_up);
                    // Its slices go on from the main run's checkpoint: its own is read no more.
                    if let Err(e) = self.store.delete_local(&catch_up.checkpoint) {
                        tracing::warn!(checkpoint = %catch_up.checkpoint, "could not delete a finished catch-up's checkpoint: {e}");
                    }
                }
                Err(e) => {
                    share.retry(catch_up);
                    pending.for_each(|(c, _)| share.retry(c));
                    return Err(e);
                }
            }
        }
        Ok(total)
    }
}
