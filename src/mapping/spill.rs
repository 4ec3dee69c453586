//! A map from 16-byte digests to small fixed-size values that keeps a bounded part of itself in memory and
//! the rest in temporary files: what lets one mapping run remember every key and resource of a
//! million-row export in a few megabytes.
//!
//! It is a small log-structured merge tree. New entries go to an in-memory table; when that is full it is
//! sorted and written out as a *run* (a sorted file), and runs of similar size are merged so that there are
//! never more than about log2(entries / memtable) of them. Each run keeps in memory a Bloom filter (about a
//! byte a key, so most lookups of absent keys read nothing) and the first key of each 4 KiB block (so a
//! lookup reads at most one block of each run whose filter says "maybe"). Lookups are exact: a Bloom
//! filter's false positive only costs a read.
//!
//! The files are unlinked as soon as they are created: nothing is left behind by a crash, and no other
//! process can open them. They hold digests and row numbers only, never a value from an export.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A key: a digest (or a UUID), so its bytes are already uniformly distributed.
pub type Key = [u8; 16];

/// A value of fixed length, stored beside its key in the files.
pub trait Fixed: Copy {
    const LEN: usize;
    fn put(&self, out: &mut [u8]);
    fn get(bytes: &[u8]) -> Self;
}

impl Fixed for () {
    const LEN: usize = 0;
    fn put(&self, _: &mut [u8]) {}
    fn get(_: &[u8]) -> Self {}
}

impl Fixed for (u64, u64) {
    const LEN: usize = 16;
    fn put(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.1.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        (u64_at(b, 0), u64_at(b, 8))
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The 64 bits a key is filed by, in memory and in the filters.
fn spread(key: &Key) -> u64 {
    let (a, b) = key.split_at(8);
    (u64_at(a, 0) ^ u64_at(b, 0).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Hashes a [`Key`] by its own bits (it is a digest already).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut key = [0u8; 16];
        let n = bytes.len().min(16);
        key[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= spread(&key);
    }
    // `[u8; 16]` hashes its length first: nothing to learn from it.
    fn write_usize(&mut self, _: usize) {}
}

type Table<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// Bytes read from a run at a time; its first key is kept in memory.
const BLOCK_BYTES: usize = 4096;
/// Bloom filter bits per key: about a 3% false positive rate (a false positive costs one block's read, usually
/// from the page cache). 10 bits (1%) held 1.3 MiB more when mapping a Hub export of 3 million rows, the most
/// of what grows with an export's size, and mapped it no faster (`scripts/bench.sh mapping 1000000`).
const BLOOM_BITS_PER_KEY: usize = 8;

/// A digest-keyed map that spills to temporary files past `capacity` entries in memory.
pub struct SpillMap<V: Fixed> {
    mem: Table<V>,
    capacity: usize,
    /// Oldest first; a key's newest value is in the newest run that has it.
    runs: Vec<Run>,
    dir: PathBuf,
    /// What the temporary files are for, in error messages.
    what: &'static str,
    block: Vec<u8>,
}

struct Run {
    file: File,
    entries: u64,
    /// The first key of each block.
    first_keys: Vec<Key>,
    bloom: Bloom,
}

impl<V: Fixed> SpillMap<V> {
    /// A map holding at most `capacity` entries in memory (the rest in files under `dir`). `what` names it in
    /// error messages.
    pub fn new(dir: &Path, capacity: usize, what: &'static str) -> Self {
        Self {
            mem: Table::with_capacity_and_hasher(capacity, Default::default()),
            capacity: capacity.max(1),
            runs: Vec::new(),
            dir: dir.to_path_buf(),
            what,
            block: Vec::new(),
        }
    }

    const ENTRY: usize = 16 + V::LEN;
    const PER_BLOCK: usize = BLOCK_BYTES / Self::ENTRY;

    /// The newest value stored under `key`.
    pub fn get(&mut self, key: &Key) -> std::io::Result<Option<V>> {
        if let Some(v) = self.mem.get(key) {
            return Ok(Some(*v));
        }
        let h = spread(key);
        for i in (0..self.runs.len()).rev() {
            let run = &self.runs[i];
            if !run.bloom.may_contain(h) {
                continue;
            }
            // The block whose first key is the last one not after `key`.
            let b = run.first_keys.partition_point(|k| k <= key);
            if b == 0 {
                continue;
            }
            let b = b - 1;
            let start = b * Self::PER_BLOCK;
            let n = (run.entries as usize - start).min(Self::PER_BLOCK);
            self.block.resize(n * Self::ENTRY, 0);
            run.file
                .read_exact_at(&mut self.block, (start * Self::ENTRY) as u64)
                .map_err(|e| self.error("reading", &e))?;
            let found = self.find(key, n);
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Whether `key` is stored.
    pub fn contains(&mut self, key: &Key) -> std::io::Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Stores `value` under `key` (a later value wins).
    pub fn insert(&mut self, key: Key, value: V) -> std::io::Result<()> {
        if self.mem.len() >= self.capacity && !self.mem.contains_key(&key) {
            self.spill()?;
        }
        self.mem.insert(key, value);
        Ok(())
    }

    /// Binary search of the `n` entries in `self.block`.
    fn find(&self, key: &Key, n: usize) -> Option<V> {
        let entry = |i: usize| &self.block[i * Self::ENTRY..(i + 1) * Self::ENTRY];
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let e = entry(mid);
            match e[..16].cmp(key.as_slice()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(V::get(&e[16..])),
            }
        }
        None
    }

    /// Writes the in-memory table out as a run, then merges runs until each is more than twice the size of
    /// the next newer one (so there are at most about log2(entries / capacity) of them).
    fn spill(&mut self) -> std::io::Result<()> {
        let mut entries: Vec<(Key, V)> = self.mem.drain().collect();
        entries.sort_unstable_by_key(|e| e.0);
        let mut w = self.writer(entries.len() as u64)?;
        for (key, value) in entries {
            w.push(&key, value).map_err(|e| self.error("writing", &e))?;
        }
        let run = w.finish().map_err(|e| self.error("writing", &e))?;
        self.runs.push(run);
        while let [.., older, newer] = self.runs.as_slice()
            && newer.entries * 2 > older.entries
        {
            let pair = self.runs.split_off(self.runs.len() - 2);
            let merged = self.merge(pair).map_err(|e| self.error("merging", &e))?;
            self.runs.push(merged);
        }
        Ok(())
    }

    /// Merges two runs, older first, into one (the newer's value wins for a key in both).
    fn merge(&self, pair: Vec<Run>) -> std::io::Result<Run> {
        let bound = pair.iter().map(|r| r.entries).sum();
        // Their filters and indexes are not needed while merging: dropped first, so that the new run's are not
        // held beside them.
        let [older, newer]: [(File, u64); 2] = pair
            .into_iter()
            .map(|r| (r.file, r.entries))
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| std::io::Error::other("merging takes two runs"))?;
        let mut a = Entries::<V>::new(&older.0, older.1);
        let mut b = Entries::<V>::new(&newer.0, newer.1);
        let mut w = self.writer(bound)?;
        let (mut x, mut y) = (a.next()?, b.next()?);
        loop {
            match (x, y) {
                (None, None) => break,
                (Some((k, v)), None) => {
                    w.push(&k, v)?;
                    x = a.next()?;
                }
                (None, Some((k, v))) => {
                    w.push(&k, v)?;
                    y = b.next()?;
                }
                (Some((p, pv)), Some((q, qv))) => match p.cmp(&q) {
                    std::cmp::Ordering::Less => {
                        w.push(&p, pv)?;
                        x = a.next()?;
                    }
                    std::cmp::Ordering::Greater => {
                        w.push(&q, qv)?;
                        y = b.next()?;
                    }
                    std::cmp::Ordering::Equal => {
                        w.push(&q, qv)?;
                        x = a.next()?;
                        y = b.next()?;
                    }
                },
            }
        }
        w.finish()
    }

    /// A writer of a new run of at most `bound` entries, in a new temporary file.
    fn writer(&self, bound: u64) -> std::io::Result<RunWriter<V>> {
        let file = self.temp_file()?;
        let bound = usize::try_from(bound).unwrap_or(usize::MAX);
        Ok(RunWriter {
            out: BufWriter::with_capacity(IO_BUFFER, file),
            bloom: Bloom::with_keys(bound),
            first_keys: Vec::with_capacity(bound.div_ceil(Self::PER_BLOCK)),
            entries: 0,
            entry: vec![0; Self::ENTRY],
            _value: std::marker::PhantomData,
        })
    }

    /// A new file in `dir`, unlinked at once (it lives as long as its handle).
    fn temp_file(&self) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = self.dir.join(format!(".connector-spill-{}-{n}", std::process::id()));
            let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path);
            match file {
                Ok(f) => {
                    std::fs::remove_file(&path).map_err(|e| self.error("creating", &e))?;
                    return Ok(f);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.error("creating", &e)),
            }
        }
    }

    fn error(&self, doing: &str, e: &std::io::Error) -> std::io::Error {
        std::io::Error::new(
            e.kind(),
            format!(
                "{doing} a temporary file in {} (the {} of this run, past the {} kept in memory): {e}; make sure \
                 that folder is writable and has room (TMPDIR chooses it)",
                self.dir.display(),
                self.what,
                self.capacity
            ),
        )
    }
}

/// Buffer of sequential reads and writes of runs.
const IO_BUFFER: usize = 64 * 1024;

/// Writes one run: sorted entries, each block's first key and the filter.
struct RunWriter<V> {
    out: BufWriter<File>,
    bloom: Bloom,
    first_keys: Vec<Key>,
    entries: u64,
    entry: Vec<u8>,
    _value: std::marker::PhantomData<V>,
}

impl<V: Fixed> RunWriter<V> {
    fn push(&mut self, key: &Key, value: V) -> std::io::Result<()> {
        if self.entries.is_multiple_of(SpillMap::<V>::PER_BLOCK as u64) {
            self.first_keys.push(*key);
        }
        self.bloom.insert(spread(key));
        self.entry[..16].copy_from_slice(key);
        value.put(&mut self.entry[16..]);
        self.out.write_all(&self.entry)?;
        self.entries += 1;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<Run> {
        self.out.flush()?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        self.first_keys.shrink_to_fit();
        Ok(Run { file, entries: self.entries, first_keys: self.first_keys, bloom: self.bloom })
    }
}

/// A run's entries in order, read sequentially by offset.
struct Entries<'a, V> {
    file: &'a File,
    buf: Vec<u8>,
    at: usize,
    /// Where the next read starts in the file, and where the entries end.
    offset: u64,
    len: u64,
    _value: std::marker::PhantomData<V>,
}

impl<'a, V: Fixed> Entries<'a, V> {
    fn new(file: &'a File, entries: u64) -> Self {
        let len = entries * SpillMap::<V>::ENTRY as u64;
        Self { file, buf: Vec::new(), at: 0, offset: 0, len, _value: std::marker::PhantomData }
    }

    fn next(&mut self) -> std::io::Result<Option<(Key, V)>> {
        let entry = SpillMap::<V>::ENTRY;
        if self.at + entry > self.buf.len() {
            let left = self.len - self.offset;
            if left == 0 {
                return Ok(None);
            }
            // Whole entries only.
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(IO_BUFFER / entry * entry);
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, self.offset)?;
            self.offset += n as u64;
            self.at = 0;
        }
        let e = &self.buf[self.at..self.at + entry];
        self.at += entry;
        let mut key = [0u8; 16];
        key.copy_from_slice(&e[..16]);
        Ok(Some((key, V::get(&e[16..]))))
    }
}

/// A split-block Bloom filter (as Parquet's): each key sets one bit in each of the eight 32-bit words of one
/// 256-bit block, so a lookup touches one cache line.
struct Bloom {
    blocks: Vec<[u32; 8]>,
}

const SALT: [u32; 8] =
    [0x47b6_137b, 0x4497_4d91, 0x8824_ad5b, 0xa2b7_289d, 0x7054_95c7, 0x2df1_424b, 0x9efc_4947, 0x5c6b_fb31];

impl Bloom {
    fn with_keys(n: usize) -> Self {
        let blocks = (n * BLOOM_BITS_PER_KEY).div_ceil(256).max(1);
        Self { blocks: vec![[0; 8]; blocks] }
    }

    fn place(&self, h: u64) -> (usize, u32) {
        let block = (((h >> 32) * self.blocks.len() as u64) >> 32) as usize;
        (block, h as u32)
    }

    fn insert(&mut self, h: u64) {
        let (b, low) = self.place(h);
        for (word, salt) in self.blocks[b].iter_mut().zip(SALT) {
            *word |= 1 << (low.wrapping_mul(salt) >> 27);
        }
    }

    fn may_contain(&self, h: u64) -> bool {
        let (b, low) = self.place(h);
        self.blocks[b].iter().zip(SALT).all(|(word, salt)| word & (1 << (low.wrapping_mul(salt) >> 27)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        let d = crate::store::sha256_hex(&n.to_string());
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&d[2 * i..2 * i + 2], 16).unwrap();
        }
        k
    }

    #[test]
    fn finds_every_key_and_only_those_across_spills_and_merges() {
        let dir = std::env::temp_dir();
        let mut m: SpillMap<(u64, u64)> = SpillMap::new(&dir, 100, "test entries");
        for n in 0..5_000u64 {
            m.insert(key(n), (n, n * 2)).unwrap();
        }
        assert!(m.runs.len() >= 2, "spilled into several runs: {}", m.runs.len());
        assert!(m.runs.len() <= 8, "merged to about log2(50) runs: {}", m.runs.len());
        for n in 0..5_000u64 {
            assert_eq!(m.get(&key(n)).unwrap(), Some((n, n * 2)), "key {n}");
        }
        for n in 5_000..10_000u64 {
            assert_eq!(m.get(&key(n)).unwrap(), None, "key {n}");
        }
    }

    #[test]
    fn a_later_value_wins_wherever_the_earlier_one_is() {
        let dir = std::env::temp_dir();
        let mut m: SpillMap<(u64, u64)> = SpillMap::new(&dir, 10, "test entries");
        for n in 0..200u64 {
            m.insert(key(n), (n, 0)).unwrap();
        }
        // The first ones are on disk by now; the new values are first in memory, then spilled and merged.
        for n in 0..50u64 {
            m.insert(key(n), (n, 1)).unwrap();
        }
        for n in 200..400u64 {
            m.insert(key(n), (n, 0)).unwrap();
        }
        for n in 0..50u64 {
            assert_eq!(m.get(&key(n)).unwrap(), Some((n, 1)));
        }
        for n in 50..400u64 {
            assert_eq!(m.get(&key(n)).unwrap(), Some((n, 0)));
        }
    }

    #[test]
    fn a_set_without_values() {
        let dir = std::env::temp_dir();
        let mut s: SpillMap<()> = SpillMap::new(&dir, 7, "test set");
        for n in (0..1_000u64).step_by(2) {
            s.insert(key(n), ()).unwrap();
            s.insert(key(n), ()).unwrap();
        }
        for n in 0..1_000u64 {
            assert_eq!(s.contains(&key(n)).unwrap(), n % 2 == 0, "key {n}");
        }
    }

    #[test]
    fn an_unwritable_folder_is_named_in_the_error() {
        let mut s: SpillMap<()> = SpillMap::new(Path::new("/nonexistent/spill"), 1, "test set");
        s.insert(key(1), ()).unwrap();
        let e = s.insert(key(2), ()).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/spill") && e.contains("TMPDIR"), "{e}");
    }
}
