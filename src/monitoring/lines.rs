//! The instances' `/metrics` lines, kept family by family as samples arrive, so that
//! a scrape copies a few long runs per family.
//!
//! The text format wants every family's lines together, while samples arrive one
//! instance at a time. Keeping each instance's text and interleaving them at a scrape
//! meant 60,000 small copies at 1,000 instances, 4–5 ms of a core. Here each family
//! has one buffer: a new sample appends its lines to every family's buffer and leaves
//! a hole where its previous lines were. A scrape copies each buffer's live runs (the
//! holes of the last samples split them into a few); a buffer is compacted when its
//! holes pass an eighth of it, so it never holds more than 8/7 of its lines (plus
//! 2 KB).
//!
//! Within a family, instances come in the order their samples arrived.

use crate::monitoring::exposition::{self, Sample};
use std::collections::HashMap;

/// Holes below this size are left for later: compacting a small buffer often costs
/// more than the bytes are worth.
const COMPACT_AT_LEAST: usize = 2048;

/// Every instance's lines, family by family.
#[derive(Debug)]
pub struct InstanceLines {
    /// One per family of [`exposition`].
    families: Vec<FamilyLines>,
    /// Each instance's slot: its index in every family's `current`.
    slots: HashMap<String, u32>,
    /// Slots of removed instances, for the next new one.
    free: Vec<u32>,
}

/// One family's lines.
#[derive(Debug, Default)]
struct FamilyLines {
    text: String,
    /// Every region in `text`, in order, live or not: a region runs to the next
    /// one's start (or the end of `text`). Regions without lines are not recorded.
    regions: Vec<Region>,
    /// Per slot, the index of the instance's live region in `regions` ([`NONE`]:
    /// none).
    current: Vec<u32>,
    /// Bytes of `text` no longer live.
    holes: usize,
}

/// No live region.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Region {
    slot: u32,
    start: u32,
}

impl FamilyLines {
    /// Whether the region at `i` is its slot's live one.
    fn is_live(&self, i: usize, region: &Region) -> bool {
        self.current.get(region.slot as usize) == Some(&(i as u32))
    }

    /// The end of the region at `i`: the next one's start, or the end of the text.
    fn end_of(&self, i: usize) -> usize {
        self.regions
            .get(i + 1)
            .map_or(self.text.len(), |next| next.start as usize)
    }

    /// Calls `run` with every stretch of live lines, in order: adjacent live regions
    /// are one stretch.
    fn live_runs(&self, mut run: impl FnMut(&str)) {
        let mut open: Option<(usize, usize)> = None;
        for (i, region) in self.regions.iter().enumerate() {
            if !self.is_live(i, region) {
                continue;
            }
            let (start, end) = (region.start as usize, self.end_of(i));
            open = match open {
                Some((from, to)) if to == start => Some((from, end)),
                Some((from, to)) => {
                    run(self.text.get(from..to).unwrap_or_default());
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((from, to)) = open {
            run(self.text.get(from..to).unwrap_or_default());
        }
    }

    /// Rewrites the text with its live lines only, with room for the samples until
    /// the next compaction (the text grows to 8/7 of its live lines by then), so
    /// that it is not reallocated, doubling, in between.
    fn compact(&mut self) {
        let live = self.text.len().saturating_sub(self.holes);
        let mut text = String::with_capacity(live + live / 7 + COMPACT_AT_LEAST);
        let live_regions = self.current.iter().filter(|&&i| i != NONE).count();
        let mut regions = Vec::with_capacity(live_regions + live_regions / 7 + 1);
        for (i, region) in self.regions.iter().enumerate() {
            if !self.is_live(i, region) {
                continue;
            }
            let lines = self.text.get(region.start as usize..self.end_of(i)).unwrap_or_default();
            if let Some(current) = self.current.get_mut(region.slot as usize) {
                *current = regions.len() as u32;
            }
            regions.push(Region {
                slot: region.slot,
                start: text.len() as u32,
            });
            text.push_str(lines);
        }
        self.text = text;
        self.regions = regions;
        self.holes = 0;
    }

    /// Forgets `slot`'s live region: its bytes become a hole.
    fn retire(&mut self, slot: u32) {
        let Some(current) = self.current.get_mut(slot as usize) else {
            return;
        };
        let i = std::mem::replace(current, NONE) as usize;
        if let Some(region) = self.regions.get(i) {
            self.holes += self.end_of(i).saturating_sub(region.start as usize);
        }
    }

    /// Compacts once the holes pass an eighth of the text: the text then holds at
    /// most 8/7 of its lines, and a line is copied about eight times in its life
    /// (2.3 KB a sample, 18 KB of copying: microseconds).
    fn compact_if_worth_it(&mut self) {
        if self.holes >= COMPACT_AT_LEAST && self.holes * 8 > self.text.len() {
            self.compact();
        }
    }
}

impl Default for InstanceLines {
    fn default() -> Self {
        InstanceLines {
            families: (0..exposition::instance_families())
                .map(|_| FamilyLines::default())
                .collect(),
            slots: HashMap::new(),
            free: Vec::new(),
        }
    }
}

impl InstanceLines {
    /// Replaces instance `name`'s lines with those of `sample`.
    pub fn replace(&mut self, name: &str, sample: &Sample<'_>) {
        let slot = self.slot(name);
        for (k, family) in self.families.iter_mut().enumerate() {
            family.retire(slot);
            let start = family.text.len();
            exposition::render_instance_family(k, &mut family.text, name, sample);
            let len = family.text.len().saturating_sub(start);
            // Past 4 GiB offsets would wrap: such a text cannot come from INFO
            // replies of kilobytes; should it, the family drops these lines.
            let (Ok(start), Ok(len)) = (u32::try_from(start), u32::try_from(len)) else {
                family.text.truncate(start);
                continue;
            };
            if len > 0 {
                if let Some(current) = family.current.get_mut(slot as usize) {
                    *current = family.regions.len() as u32;
                }
                family.regions.push(Region { slot, start });
            }
            family.compact_if_worth_it();
        }
    }

    /// Forgets instance `name`'s lines.
    pub fn remove(&mut self, name: &str) {
        let Some(slot) = self.slots.remove(name) else {
            return;
        };
        for family in &mut self.families {
            family.retire(slot);
            family.compact_if_worth_it();
        }
        self.free.push(slot);
    }

    /// `name`'s slot, given one if it has none.
    fn slot(&mut self, name: &str) -> u32 {
        if let Some(&slot) = self.slots.get(name) {
            return slot;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.slots.len() as u32;
                for family in &mut self.families {
                    family.current.push(NONE);
                }
                slot
            }
        };
        self.slots.insert(name.to_string(), slot);
        slot
    }

    /// About the bytes [`InstanceLines::append_to`] writes (to size the buffer once).
    pub fn len_hint(&self) -> usize {
        self.families
            .iter()
            .enumerate()
            .map(|(k, f)| exposition::instance_descriptor(k).len() + f.text.len().saturating_sub(f.holes))
            .sum()
    }

    /// Appends every family: its descriptor, then the lines of every instance.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        for (k, family) in self.families.iter().enumerate() {
            out.extend_from_slice(exposition::instance_descriptor(k).as_bytes());
            family.live_runs(|run| out.extend_from_slice(run.as_bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ServerStats;
    use proptest::prelude::*;

    fn stats(clients: u64, keys: &[u64]) -> ServerStats {
        ServerStats {
            connected_clients: Some(clients),
            uptime_seconds: Some(5),
            keyspace: keys
                .iter()
                .enumerate()
                .map(|(db, &keys)| crate::engine::DbKeys {
                    db: db as u32,
                    keys,
                    expires: 0,
                    avg_ttl_ms: None,
                })
                .collect(),
            ..ServerStats::default()
        }
    }

    fn sample(server: &ServerStats) -> Sample<'_> {
        Sample {
            sampled_at_ms: 10_000,
            server,
            process: None,
        }
    }

    /// What a scrape shows, as sorted lines.
    fn shown(lines: &InstanceLines) -> Vec<String> {
        let mut out = Vec::new();
        lines.append_to(&mut out);
        let text = String::from_utf8(out).expect("UTF-8");
        let mut shown: Vec<String> = text.lines().map(str::to_string).collect();
        shown.sort();
        shown
    }

    /// The same instances rendered from scratch.
    fn expected(current: &HashMap<String, ServerStats>) -> Vec<String> {
        let mut fresh = InstanceLines::default();
        let mut names: Vec<&String> = current.keys().collect();
        names.sort();
        for name in names {
            fresh.replace(name, &sample(&current[name]));
        }
        shown(&fresh)
    }

    #[test]
    fn a_new_sample_replaces_the_old_lines_and_the_holes_are_bounded() {
        let mut lines = InstanceLines::default();
        let mut current = HashMap::new();
        for round in 0..200u64 {
            for i in 0..20 {
                let name = format!("i{i}");
                let server = stats(round * 100 + i, &[round, 1]);
                lines.replace(&name, &sample(&server));
                current.insert(name, server);
            }
        }
        assert_eq!(shown(&lines), expected(&current));
        let live: usize = lines.families.iter().map(|f| f.text.len() - f.holes).sum();
        let kept: usize = lines.families.iter().map(|f| f.text.len()).sum();
        let families = lines.families.len();
        assert!(
            kept <= live + live / 6 + families * COMPACT_AT_LEAST,
            "{kept} kept for {live} live"
        );
        assert!(shown(&lines)
            .iter()
            .any(|l| l == "redis_connected_clients{name=\"i7\"} 19907.0"));
    }

    #[test]
    fn a_removed_instance_shows_no_lines_and_its_slot_is_reused() {
        let mut lines = InstanceLines::default();
        let (a, b) = (stats(1, &[3]), stats(2, &[]));
        lines.replace("a", &sample(&a));
        lines.replace("b", &sample(&b));
        lines.remove("a");
        lines.remove("never-seen");
        assert!(shown(&lines).iter().all(|l| !l.contains("name=\"a\"")));
        let c = stats(3, &[4, 5]);
        lines.replace("c", &sample(&c));
        assert_eq!(lines.slots.len(), 2);
        assert_eq!(lines.slots["c"], 0, "a's slot");
        let current = HashMap::from([("b".to_string(), b), ("c".to_string(), c)]);
        assert_eq!(shown(&lines), expected(&current));
    }

    #[test]
    fn nothing_kept_shows_the_descriptors_only() {
        let lines = InstanceLines::default();
        assert!(shown(&lines).iter().all(|l| l.starts_with("# ")));
        assert_eq!(shown(&lines).len(), 2 * exposition::instance_families());
    }

    proptest! {
        /// Any sequence of samples and removals shows exactly the last sample of
        /// every instance still there.
        #[test]
        fn shows_the_last_sample_of_every_instance(
            steps in proptest::collection::vec((0..6u8, any::<bool>(), 0..1000u64, 0..4usize), 1..300)
        ) {
            let mut lines = InstanceLines::default();
            let mut current = HashMap::new();
            for (instance, remove, clients, dbs) in steps {
                let name = format!("n{instance}");
                if remove {
                    lines.remove(&name);
                    current.remove(&name);
                } else {
                    let keys: Vec<u64> = (0..dbs as u64).map(|d| clients + d).collect();
                    let server = stats(clients, &keys);
                    lines.replace(&name, &sample(&server));
                    current.insert(name, server);
                }
            }
            prop_assert_eq!(shown(&lines), expected(&current));
        }
    }
}
