//! Model files mapped into memory for loading: the one module of the workspace's libraries
//! allowed `unsafe` code (`tests/tests/layering.rs` keeps it so).
//!
//! A load reads every tensor once, converting it into its kernel's layout. Reading through a
//! mapping instead of `read(2)` saves copying the whole file through a buffer (about a tenth of
//! a 1.5B model's load, measured with `perf`), and the pages come straight from the page cache
//! that other processes share. The mapping lives only while the model loads: the loaded
//! weights are the kernels' own copies.

#![allow(unsafe_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap};

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
        // unlinking it (a mapping keeps the unlinked inode's pages). The mapping is read-only,
        // private to this load and dropped when the load ends. What remains is a user editing
        // their own file in place while it loads (a path given to `infer`, or the source of an
        // import hard-linked into the store): the same contract llama.cpp's default mmap loading
        // has, stated in docs/ARCHITECTURE.md.
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

    /// Bytes `offset..offset + len`, or `None` when they do not lie inside the file.
    pub fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.map.get(start..end)
    }
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
        // Unlinked while mapped (how the store evicts): the pages stay readable.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(m.bytes(123, 4), Some(&data[123..127]));
        assert!(MappedFile::open(&path).is_err());
    }
}
