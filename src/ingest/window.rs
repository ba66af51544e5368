//! Entries gathered from one or more reads, coalesced by study and kept small: entries are
//! remembered by their ids only (20 bytes each), whole only when they are bad.

use std::collections::{BTreeSet, HashMap};

use foldhash::fast::RandomState;
use indexmap::IndexMap;

use crate::ids::{TenantId, Uid};
use crate::ingest::entry::{Delivered, EntryId, StreamEntry};
use crate::ingest::event::{self, EventError, EventKind};

/// A study, by tenant and Study Instance UID.
pub type StudyKey = (TenantId, Uid);

/// No entry: the end of a study's list.
const NONE: u32 = u32::MAX;

/// Series one part of a study holds: a study naming more series in one window goes on in
/// a new part, filled (and its series scheduled) in a later round.
pub const SERIES_PER_PART: usize = 1_000;

/// A window stops gathering once its studies and series take about this many heap bytes,
/// however few entries it holds (each naming a new study or series).
pub const MAX_STUDY_BYTES: usize = 16 << 20;

/// Heap bytes counted for a study in the window, besides its ids' text.
const STUDY_OVERHEAD: usize = std::mem::size_of::<StudyWork>() + 64;
/// Heap bytes counted for a series of a study, besides its UID's text.
const SERIES_OVERHEAD: usize = 48;

/// A study's part in the window: the study, and 0 unless it named more than
/// [`SERIES_PER_PART`] series.
type Slot = (StudyKey, u32);

/// A study in the window: what its events ask for, and its list of entries.
#[derive(Debug)]
struct StudyWork {
    kind: EventKind,
    series: BTreeSet<Uid>,
    first: u32,
    last: u32,
    count: usize,
}

/// A study taken from the front of the window, with its entries.
#[derive(Debug)]
pub struct Study<'a> {
    /// The tenant and the Study Instance UID.
    pub key: &'a StudyKey,
    /// `Deleted` when any of its events in the window is a deletion, whatever the order:
    /// without rows the study is removed, with rows (stored again) it is filled.
    pub kind: EventKind,
    /// The series named by its `stored` events.
    pub series: &'a BTreeSet<Uid>,
    /// Every entry of the study, in stream order.
    pub entries: Vec<Delivered>,
}

/// An entry that is not a valid event, with the reason it is dead-lettered.
#[derive(Debug)]
pub struct BadEntry {
    /// The entry as read.
    pub entry: StreamEntry,
    /// What is wrong with it.
    pub reason: EventError,
}

/// Entries coalesced by study; studies in the order of their first entry.
///
/// Entry ids sit in one flat list, each linked to its study's next entry (20 bytes an
/// entry), so a window of a million entries stays a few tens of MiB.
#[derive(Debug, Default)]
pub struct Window {
    studies: IndexMap<Slot, StudyWork, RandomState>,
    /// The latest part of each study that has more than one.
    parts: HashMap<StudyKey, u32, RandomState>,
    /// About how many heap bytes the studies and their series take.
    study_bytes: usize,
    ids: Vec<EntryId>,
    next: Vec<u32>,
    /// Delivery counts other than 1 (entries claimed back), by index in `ids`.
    redelivered: HashMap<u32, u64, RandomState>,
    bad: Vec<BadEntry>,
    entries: usize,
}

impl Window {
    /// Parses `entry` and adds it to its study (or to the bad entries). A deletion anywhere
    /// in the window marks the study: the database then decides (removed without rows).
    pub fn add(&mut self, entry: StreamEntry) {
        self.entries += 1;
        let parsed = match entry.oversize {
            Some(oversize) => Err(oversize.error(&entry.fields)),
            None => event::parse(&entry.fields),
        };
        let event = match parsed {
            Ok(event) => event,
            Err(reason) => {
                self.bad.push(BadEntry { entry, reason });
                return;
            }
        };
        let index = u32::try_from(self.ids.len()).expect("a window holds fewer than 2^32 entries");
        self.ids.push(entry.id);
        self.next.push(NONE);
        if entry.deliveries != 1 {
            self.redelivered.insert(index, entry.deliveries);
        }
        let mut slot: Slot = ((event.tenant, event.study), 0);
        if let Some(&latest) = self.parts.get(&slot.0) {
            slot.1 = latest;
            if event.kind == EventKind::Deleted {
                // The deletion wins over every part of the study, whatever the order.
                for earlier in 0..latest {
                    if let Some(work) = self.studies.get_mut(&(slot.0.clone(), earlier)) {
                        work.kind = EventKind::Deleted;
                    }
                }
            }
        }
        if let (EventKind::Stored, Some(series)) = (event.kind, &event.series)
            && self.studies.get(&slot).is_some_and(|work| {
                work.series.len() >= SERIES_PER_PART && !work.series.contains(series)
            })
        {
            slot.1 += 1;
            self.parts.insert(slot.0.clone(), slot.1);
        }
        let work = match self.studies.entry(slot) {
            indexmap::map::Entry::Occupied(work) => work.into_mut(),
            indexmap::map::Entry::Vacant(slot) => {
                let ((tenant, study), _) = slot.key();
                self.study_bytes += STUDY_OVERHEAD + tenant.as_str().len() + study.as_str().len();
                slot.insert(StudyWork {
                    kind: event.kind,
                    series: BTreeSet::new(),
                    first: index,
                    last: NONE,
                    count: 0,
                })
            }
        };
        if work.last != NONE {
            self.next[work.last as usize] = index;
        }
        work.last = index;
        work.count += 1;
        if event.kind == EventKind::Deleted {
            work.kind = EventKind::Deleted;
        }
        if let (EventKind::Stored, Some(series)) = (event.kind, event.series) {
            let bytes = SERIES_OVERHEAD + series.as_str().len();
            if work.series.insert(series) {
                self.study_bytes += bytes;
            }
        }
    }

    /// About how many heap bytes the window's studies and series take, as gathered (its
    /// entries take 20 bytes each besides).
    pub fn study_bytes(&self) -> usize {
        self.study_bytes
    }

    /// Entries added so far.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when nothing is left to process.
    pub fn is_empty(&self) -> bool {
        self.studies.is_empty() && self.bad.is_empty()
    }

    /// The entries that are not valid events.
    pub fn bad(&self) -> &[BadEntry] {
        &self.bad
    }

    /// Forgets the bad entries, once dead-lettered.
    pub fn bad_done(&mut self) {
        self.bad.clear();
    }

    /// Studies from the front, to process before [`Window::done`]: up to `studies` of
    /// them, no more than `entries` entries and [`SERIES_PER_PART`] series unless the
    /// first study alone has more.
    pub fn front(&self, studies: usize, entries: usize) -> Vec<Study<'_>> {
        let (mut taken, mut series) = (0, 0);
        self.studies
            .iter()
            .take(studies)
            .take_while(|(_, work)| {
                taken += work.count;
                series += work.series.len();
                let first = taken == work.count;
                first || (taken <= entries && series <= SERIES_PER_PART)
            })
            .map(|((key, _), work)| Study {
                key,
                kind: work.kind,
                series: &work.series,
                entries: self.entries_of(work),
            })
            .collect()
    }

    fn entries_of(&self, work: &StudyWork) -> Vec<Delivered> {
        let mut entries = Vec::with_capacity(work.count);
        let mut index = work.first;
        while index != NONE {
            entries.push(Delivered {
                id: self.ids[index as usize],
                deliveries: self.redelivered.get(&index).copied().unwrap_or(1),
            });
            index = self.next[index as usize];
        }
        entries
    }

    /// The ids of every entry still in the window: its studies' and its bad entries.
    pub fn ids(&self) -> impl Iterator<Item = EntryId> + '_ {
        let studies = self.studies.values().flat_map(|work| {
            std::iter::successors(Some(work.first), |&index| {
                Some(self.next[index as usize]).filter(|&next| next != NONE)
            })
            .map(|index| self.ids[index as usize])
        });
        studies.chain(self.bad.iter().map(|bad| bad.entry.id))
    }

    /// Forgets the first `count` studies, once processed.
    pub fn done(&mut self, count: usize) {
        self.studies.drain(..count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)], deliveries: u64) -> StreamEntry {
        StreamEntry {
            id: id.parse().expect("entry id"),
            fields: fields
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            deliveries,
            oversize: None,
        }
    }

    fn stored(id: &str, study: &str, series: &str) -> StreamEntry {
        let fields = [
            ("tenant_id", "t1"),
            ("study_uid", study),
            ("series_uid", series),
            ("event", "stored"),
        ];
        entry(id, &fields, 1)
    }

    #[test]
    fn coalesces_by_study_keeping_ids_series_and_any_deletion() {
        let mut window = Window::default();
        window.add(stored("1-0", "1.2", "1.2.1"));
        window.add(stored("1-1", "1.3", "1.3.1"));
        window.add(stored("2-0", "1.2", "1.2.2"));
        let deleted = [
            ("tenant_id", "t1"),
            ("study_uid", "1.3"),
            ("event", "deleted"),
        ];
        window.add(entry("3-0", &deleted, 3));
        // A late `stored` event after the deletion does not hide it.
        window.add(stored("3-1", "1.3", "1.3.1"));
        window.add(entry("4-0", &[("study_uid", "1.2")], 1));
        assert_eq!(window.len(), 6);
        assert_eq!(window.bad().len(), 1);
        let front = window.front(10, 100);
        assert_eq!(front.len(), 2);
        let study = &front[0];
        assert_eq!((study.key.0.as_str(), study.key.1.as_str()), ("t1", "1.2"));
        assert_eq!(study.kind, EventKind::Stored);
        let ids: Vec<String> = study.entries.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["1-0", "2-0"]);
        assert_eq!(study.series.len(), 2);
        assert_eq!(front[1].kind, EventKind::Deleted);
        let deliveries: Vec<u64> = front[1].entries.iter().map(|e| e.deliveries).collect();
        assert_eq!(deliveries, [1, 3, 1]);
        assert_eq!(
            window.front(10, 2).len(),
            1,
            "1.2's two entries fill a round of 2"
        );
        assert_eq!(
            window.front(10, 1).len(),
            1,
            "a round holds at least one study"
        );
        let in_hand: Vec<String> = window.ids().map(|id| id.to_string()).collect();
        assert_eq!(in_hand, ["1-0", "2-0", "1-1", "3-0", "3-1", "4-0"]);
        window.done(1);
        assert_eq!(window.front(10, 100).len(), 1);
        let in_hand: Vec<String> = window.ids().map(|id| id.to_string()).collect();
        assert_eq!(in_hand, ["1-1", "3-0", "3-1", "4-0"]);
        window.done(1);
        window.bad_done();
        assert!(window.is_empty());
    }

    #[test]
    fn a_study_naming_many_series_goes_on_in_later_rounds() {
        let mut window = Window::default();
        let total = 2 * SERIES_PER_PART + 10;
        for n in 0..total {
            window.add(stored(&format!("1-{n}"), "1.2", &format!("1.2.{n}")));
            // A series already in the current part stays there.
            window.add(stored(&format!("2-{n}"), "1.2", &format!("1.2.{n}")));
        }
        let deleted = [
            ("tenant_id", "t1"),
            ("study_uid", "1.2"),
            ("event", "deleted"),
        ];
        window.add(entry("3-0", &deleted, 1));
        window.add(stored("4-0", "1.9", "1.9.1"));
        let mut rounds = Vec::new();
        while !window.is_empty() {
            let round = window.front(100, 1_000_000);
            rounds.push(
                round
                    .iter()
                    .map(|study| {
                        (
                            study.key.1.as_str().to_owned(),
                            study.series.len(),
                            study.kind,
                        )
                    })
                    .collect::<Vec<_>>(),
            );
            let studies = round.len();
            drop(round);
            window.done(studies);
        }
        let part = |series| ("1.2".to_owned(), series, EventKind::Deleted);
        assert_eq!(
            rounds,
            [
                vec![part(SERIES_PER_PART)],
                vec![part(SERIES_PER_PART)],
                vec![part(10), ("1.9".to_owned(), 1, EventKind::Stored)],
            ],
            "no series dropped, none in two parts, the deletion marks every part"
        );
    }

    #[test]
    fn counts_the_bytes_of_its_studies_and_series() {
        let mut window = Window::default();
        window.add(stored("1-0", "1.2", "1.2.1"));
        let one = window.study_bytes();
        assert!(one >= STUDY_OVERHEAD + SERIES_OVERHEAD, "{one}");
        window.add(stored("1-1", "1.2", "1.2.1"));
        assert_eq!(window.study_bytes(), one, "nothing new");
        window.add(stored("1-2", "1.2", "1.2.2"));
        assert_eq!(window.study_bytes(), one + SERIES_OVERHEAD + "1.2.2".len());
        window.add(stored("1-3", "1.3", "1.3.1"));
        assert_eq!(
            window.study_bytes(),
            2 * one + SERIES_OVERHEAD + "1.2.2".len()
        );
    }
}
