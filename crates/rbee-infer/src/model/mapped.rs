//! Model files mapped into memory for loading: the one module of the workspace's libraries
//! allowed `unsafe` code (`tests/tests/layering.rs` keeps it so).
//!
//! A load reads every tensor once. Tensors stored in their kernel's layout (Q4_K: the kernels
//! read ggml's blocks) are used in place: the matrix keeps a [`MappedRange`] of the file, so
//! its pages are the page cache's, shared by every process that maps the same file and counted
//! once. The other tensors are converted into their kernel's layout, reading through the
//! mapping (which saves copying the whole file through a `read(2)` buffer, about a tenth of a
//! 1.5B model's load, measured with `perf`), and their file pages are dropped from this
//! process ([`MappedFile::release`]) once converted. The mapping lives as long as the last
//! range a matrix keeps.

#![allow(unsafe_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Advice, Mmap, UncheckedAdvice};

/// The page size `release` aligns to (x86-64's; where pages are larger the advice is refused
/// and ignored: the pages then stay mapped until the load ends, as without it).
const PAGE: usize = 4096;

/// A whole file, mapped read-only.
pub(crate) struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .finish()
    }
}

impl MappedFile {
    pub fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: `Mmap::map` is unsafe because the bytes behind the returned slice may change,
        // or vanish (SIGBUS on truncation), if the file is modified while mapped. Nothing in rbee
        // writes a model file in place: the store writes every blob to a temporary file, syncs
        // it and renames it into place, never opens a blob for writing again, and removes one by
        // unlinking it (a mapping keeps the unlinked inode's pages, so evicting a loaded model
        // from the store is safe). The mapping is read-only and lives as long as the loaded
        // model keeps ranges of it. What remains is a user editing their own file in place while
        // it is loaded (a path given to `infer`, or the source of an import hard-linked into
        // the store): the same contract llama.cpp's default mmap loading has, stated in
        // docs/ARCHITECTURE.md.
        let map = unsafe { Mmap::map(&file)? };
        // The loader walks tensors in file order: ask for read-ahead.
        let _ = map.advise(Advice::Sequential);
        Ok(MappedFile {
            path: path.to_owned(),
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops this process's mapping of the whole pages inside `offset..offset + len` (the page
    /// cache keeps them): a load that has converted a tensor no longer counts its file bytes
    /// in its resident memory, so the peak is the converted weights, not those plus the file.
    /// Reading the range again afterwards is still correct, only slower.
    pub fn release(&self, offset: u64, len: u64) {
        let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
            return;
        };
        let Some(first) = start.checked_next_multiple_of(PAGE) else {
            return;
        };
        let end = start.saturating_add(len).min(self.map.len()) / PAGE * PAGE;
        if end <= first {
            return;
        }
        // SAFETY: MADV_DONTNEED is unchecked advice because on private or anonymous memory it
        // discards contents. This mapping is a read-only shared mapping of a file: the kernel
        // drops only the page-table entries, and the next access maps the same page-cache page
        // again (or reads it back from the file), so every byte reads the same before and
        // after, including through slices `bytes` handed out earlier. The range lies inside
        // the mapping (clamped above). That the file itself does not change is the invariant
        // `open` already relies on.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, first, end - first)
        };
    }

    /// Bytes `offset..offset + len`, or `None` when they do not lie inside the file.
    pub fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.map.get(start..end)
    }

    /// Bytes `offset..offset + len` kept for use after the load (the mapping lives while any
    /// such range does), or `None` when they do not lie inside the file. The load's sequential
    /// read-ahead advice is lifted from them: with it the kernel would reclaim these pages
    /// first under memory pressure, as pages read once.
    pub fn keep(self: &Arc<Self>, offset: u64, len: u64) -> Option<MappedRange> {
        self.bytes(offset, len)?;
        let (start, len) = (usize::try_from(offset).ok()?, usize::try_from(len).ok()?);
        let _ = self.map.advise_range(Advice::Normal, start, len);
        Some(MappedRange {
            file: Arc::clone(self),
            start,
            len,
        })
    }
}

/// A range of a mapped file that a loaded matrix uses in place.
#[derive(Clone)]
pub struct MappedRange {
    file: Arc<MappedFile>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for MappedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}[{}..{}]",
            self.file.path.display(),
            self.start,
            self.start + self.len
        )
    }
}

impl MappedRange {
    pub fn bytes(&self) -> &[u8] {
        &self.file.map[self.start..self.start + self.len]
    }
}

/// Reads one byte of every page of `bytes` (a slice of a mapping), so that each is mapped into
/// this process now, read from the file if the page cache lacks it, as llama.cpp's
/// `MAP_POPULATE` does: a load ends with its weights resident, and the first token does not pay
/// the page faults. Returns the bytes folded together, so that no read is optimised away.
pub(crate) fn touch_pages(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .step_by(PAGE)
        .fold(0u8, |acc, &b| acc ^ std::hint::black_box(b))
}

#[cfg(test)]
mod tests {
    use super::MappedFile;

    #[test]
    fn maps_a_file_and_refuses_ranges_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let m = MappedFile::open(&path).unwrap();
        assert_eq!(m.bytes(0, 10_000), Some(&data[..]));
        assert_eq!(m.bytes(4096, 3), Some(&data[4096..4099]));
        assert_eq!(m.bytes(9_999, 2), None);
        assert_eq!(m.bytes(u64::MAX, 1), None);
        assert_eq!(m.bytes(10_000, 0), Some(&[][..]));
        // Released pages read the same again (and ranges past the end are ignored).
        let before = m.bytes(0, 10_000).unwrap().to_vec();
        m.release(0, 10_000);
        m.release(100, 5000);
        m.release(8192, u64::MAX);
        m.release(u64::MAX, 10);
        assert_eq!(m.bytes(0, 10_000), Some(&before[..]));
        assert_eq!(before, data);
        // Unlinked while mapped (how the store evicts): the pages stay readable.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(m.bytes(123, 4), Some(&data[123..127]));
        assert!(MappedFile::open(&path).is_err());
    }
}
