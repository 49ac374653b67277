//! Following the feed: the reader stage of a run. It reads a page of changes, has the page
//! prepared (extensions chosen and run, see `dispatch`), gathers the `process_later` values and
//! runs the later_handlers when they are due, and hands each page's work to the writer, one
//! page ahead of it.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::dispatch::PageWork;
use super::later::{LaterQueue, SharedQueue};
use super::{Pipeline, PipelineError, RunOptions, Stats};
use crate::store::{ChangesPage, Seq};
use crate::timing::span;

/// A page's work for the writer: the work, the feed position after it, and what it changed
/// of the later queue.
pub(super) type ToWrite = (PageWork, Seq, LaterWrites);

/// What a page changed of the later queue.
#[derive(Debug, Default)]
pub(super) struct LaterWrites {
    /// The run's own queue's new text (a run without `--share`).
    pub(super) queue: Option<String>,
    /// Records of the shared queue written or deleted (`--share`).
    pub(super) shared: Vec<crate::store::Record>,
}

/// The reader stage of one run.
pub(super) struct Follower<'p> {
    pub(super) pipeline: &'p Pipeline,
    pub(super) options: &'p RunOptions,
    /// Where the next page starts.
    pub(super) since: Seq,
    pub(super) later: LaterQueue,
    pub(super) later_id: String,
    /// A shared worker's side of the shared queue (see `later::SHARED_PREFIX`): its values go
    /// there, and only the runner runs later_handlers.
    pub(super) shared: Option<SharedQueue>,
    /// A run without `--share`: the shared queue's records whose values it took up, deleted
    /// with the first page (which writes them in its own queue).
    pub(super) shared_left: Vec<crate::store::Record>,
    /// Pages handed to the writer and not yet written.
    pub(super) in_flight: usize,
    /// The feed was seen drained, with nothing in flight, since the last page sent: the
    /// next page starts anew as far as runaway cascades go.
    pub(super) quiet: bool,
}

/// How the loop goes on after a page was read.
enum Next {
    /// Work to hand to the writer.
    Work(Box<PageWork>, LaterWrites),
    /// Nothing to do with this page: read again.
    ReadAgain,
    /// The run is over (or the writer stopped; its error is reported by the caller).
    Stop,
}

impl Follower<'_> {
    /// Follows the feed until it is drained (or, continuous, until told to stop), handing the
    /// pages' work to the writer through `work` and hearing of each page written on `done`.
    pub(super) fn run(&mut self, work: &Sender<ToWrite>, done: &Receiver<()>, stats: &Mutex<Stats>) -> Result<(), PipelineError> {
        loop {
            let (next, first_error) = self.step(done, stats)?;
            let (page_work, later) = match next {
                Next::Work(page_work, later) => (page_work, later),
                Next::ReadAgain => continue,
                Next::Stop => return Ok(()),
            };
            let t = span("R:send-wait");
            if work.send((*page_work, self.since.clone(), later)).is_err() {
                return Ok(()); // the writer stopped; its error is reported by the caller
            }
            drop(t);
            self.in_flight += 1;
            if let (true, Some(e)) = (self.options.stop_on_error, first_error) {
                return Err(PipelineError::StoppedOnError(e));
            }
        }
    }

    /// Reads one page and prepares its work, with the first handler error.
    fn step(&mut self, done: &Receiver<()>, stats: &Mutex<Stats>) -> Result<(Next, Option<String>), PipelineError> {
        if self.stopped() {
            // No new work: what is in flight is written (with its checkpoint) before the run
            // returns; the later queue waits in its record for the next run.
            while self.in_flight > 0 && self.written(done) {}
            return Ok((Next::Stop, None));
        }
        // Read before the page: raised then, everything it was raised after is in the feed
        // this page reads.
        let stopping = self.options.until.as_ref().is_some_and(|u| u.load(Ordering::SeqCst));
        // Writes acknowledged before the read are in what it reads; one acknowledged after it
        // stays in flight, to be waited for and read again. (Counted after the read, a page
        // committed between the two was neither: a run could end with it unread — its
        // cascades, a later_handler's outputs, never processed.)
        while done.try_recv().is_ok() {
            self.in_flight -= 1;
        }
        let page = self.read_page()?;
        let drained = page.changes.is_empty();
        if drained && self.in_flight > 0 {
            // What the writer is writing may cascade: wait for it, then look again.
            return Ok((if self.written(done) { Next::ReadAgain } else { Next::Stop }, None));
        }
        // The leases' rounds move the feed every few seconds: that is not work.
        let quiet = page.changes.iter().all(|c| c.id.starts_with(super::share::SHARE_PREFIX));
        let looked = self.look_for_shared_values(quiet, done)?;
        if drained && self.later.is_empty() && self.shared.as_ref().is_none_or(|s| !s.holds_taken()) {
            self.quiet = true;
            let go_on = self.options.continuous && !stopping;
            return Ok((if go_on { Next::ReadAgain } else { Next::Stop }, None));
        }
        let mut local = Stats { changes_read: page.changes.len() as u64, ..Stats::default() };
        let t = span("R:prepare");
        let (mut work, mut first_error) = self.pipeline.prepare_page(&page.changes, self.options, &mut local)?;
        drop(t);
        // A shared worker keeps the page's own values apart from the shared queue's it took in:
        // if they do not run now, only the page's are written (the records taken stay).
        let mut fresh = LaterQueue::default();
        for (ext, values) in std::mem::take(&mut work.later) {
            if self.shared.is_some() {
                fresh.extend(&ext, values)
            } else {
                self.later.extend(&ext, values)
            }
        }
        // The later_handlers run once everything before is written and the feed has nothing
        // new (they then read settled documents), or when the queue is due — but not once a
        // stop is asked for: they may take long, and their values wait in the queue's record.
        // A shared worker runs them only when it took in the shared queue's values.
        let due = match &self.shared {
            None => drained || self.later.due(),
            Some(_) => looked,
        };
        let mut ran = false;
        if due && !self.stopped() {
            match self.run_queue(&mut fresh, &mut work, &mut local, done) {
                None => return Ok((Next::Stop, None)),
                Some((r, error)) => {
                    ran = r;
                    first_error = first_error.or(error);
                }
            }
        }
        stats.lock().unwrap_or_else(|p| p.into_inner()).add(&local);
        work.settled = drained || std::mem::take(&mut self.quiet);
        if !drained {
            self.since = page.last_seq;
        }
        let later = self.later_writes(ran, fresh);
        Ok((Next::Work(Box::new(work), later), first_error))
    }

    /// Runs the later_handlers over the queue (and a shared worker's page's own values,
    /// `fresh`), their outputs added to `work`: whether they ran (a shared worker that lost
    /// slice 0 meanwhile drops them), with the first error; `None` when the writer stopped.
    fn run_queue(
        &mut self,
        fresh: &mut LaterQueue,
        work: &mut PageWork,
        local: &mut Stats,
        done: &Receiver<()>,
    ) -> Option<(bool, Option<String>)> {
        // Settled means written: a later_handler (the conversations) may build on what the
        // previous run of the queue emitted.
        while self.in_flight > 0 {
            if !self.written(done) {
                return None;
            }
        }
        // The page's own values stay in `fresh` until they have run: if they do not, the page
        // writes them as its record.
        for (ext, values) in fresh.clone().take() {
            self.later.extend(&ext, values);
        }
        let t = span("R:later");
        let (items, removals, error) = self.pipeline.run_later(self.later.take(), &self.later_id, local);
        drop(t);
        if self.shared.is_some() && !self.runs_later() {
            // Slice 0 was lost while they ran (fenced, or taken): another worker runs them
            // now, and only one writes what they give.
            tracing::warn!("lost the later_handlers' slice while they ran: their outputs are left to the next holder");
            return Some((false, None));
        }
        *fresh = LaterQueue::default();
        work.items.extend(items);
        work.removals.extend(removals);
        Some((true, error))
    }

    /// What the page writes of the later queue: the run's own queue, or a shared worker's
    /// page's values (`fresh`, when they did not run) and the records taken in that ran.
    fn later_writes(&mut self, ran: bool, mut fresh: LaterQueue) -> LaterWrites {
        let Some(shared) = self.shared.as_mut() else {
            return LaterWrites { queue: self.later.saved(), shared: std::mem::take(&mut self.shared_left) };
        };
        if !ran {
            // What was taken in stays in its records for the next look.
            self.later = LaterQueue::default();
            shared.forget_taken();
        }
        LaterWrites { queue: None, shared: shared.page_records(&mut fresh) }
    }

    /// Whether this run runs the later_handlers of every shared worker now.
    fn runs_later(&self) -> bool {
        self.options.share.as_ref().is_some_and(|held| held.runs_later())
    }

    /// A shared worker that runs the later_handlers (see `share::LATER_SLICE`) takes in the
    /// values waiting in the shared queue, when it is time to look (`quiet`: the page read has
    /// no change but the leases'); whether it did.
    fn look_for_shared_values(&mut self, quiet: bool, done: &Receiver<()>) -> Result<bool, PipelineError> {
        let runs_later = self.runs_later();
        let Some(shared) = self.shared.as_mut() else { return Ok(false) };
        if !quiet {
            shared.moved();
        }
        if !runs_later || !shared.look_due(quiet) || self.stopped() {
            return Ok(false);
        }
        // The pages in flight first: one may delete records taken in by the last look.
        while self.in_flight > 0 {
            if !self.written(done) {
                return Ok(false);
            }
        }
        let _t = span("R:shared-later");
        let Some(shared) = self.shared.as_mut() else { return Ok(false) };
        let found = shared.take_waiting(&*self.pipeline.store, &mut self.later)?;
        if found > 0 {
            tracing::debug!(records = found, "took in the shared later queue");
        }
        Ok(true)
    }

    fn stopped(&self) -> bool {
        self.options.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// The next page of the feed, as text. Continuous and with nothing in flight, it first waits
    /// for something new (briefly when a signal may end the run, so it is seen soon).
    fn read_page(&self) -> Result<ChangesPage<std::sync::Arc<str>>, PipelineError> {
        let _t = span("R:changes");
        let store = &*self.pipeline.store;
        if self.options.continuous && self.in_flight == 0 && self.later.is_empty() {
            let wait = match (&self.options.until, &self.options.stop) {
                (Some(_), _) => Duration::from_millis(20),
                (None, Some(_)) => Duration::from_millis(250),
                (None, None) => Duration::from_secs(30),
            };
            if !store.wait_changes(&self.since, wait)? {
                return Ok(ChangesPage { changes: Vec::new(), last_seq: self.since.clone() });
            }
        }
        Ok(store.changes(&self.since, self.options.page_size, true)?)
    }

    /// Waits for the writer to finish one page; false when it stopped (its error is reported
    /// by the caller).
    fn written(&mut self, done: &Receiver<()>) -> bool {
        let ok = done.recv().is_ok();
        self.in_flight -= usize::from(ok);
        ok
    }
}
