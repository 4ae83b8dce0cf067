//! Durable file operations: every write is temp file, fsync, rename, fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, StoreError};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other process or thread will pick: pid, time and a counter.
pub(crate) fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{n}.tmp", std::process::id())
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("sync directory", dir)
}

/// Writes `bytes` to `dest` atomically: readers see the old content or the new, never a mix.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(unique_name(".write"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create", &tmp)?;
        f.write_all(bytes).ctx("write", &tmp)?;
        f.sync_all().ctx("sync", &tmp)?;
        fs::rename(&tmp, dest).ctx("rename into place", dest)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Moves a fully written and synced file into place and makes the rename durable.
pub(crate) fn commit_file(tmp: &Path, dest: &Path) -> Result<(), StoreError> {
    fs::rename(tmp, dest).ctx("rename into place", dest)?;
    sync_dir(dest.parent().unwrap_or(Path::new(".")))
}

pub(crate) fn create_dir_all(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).ctx("create directory", dir)
}

/// Removes a file or directory tree if present; absence is success.
pub(crate) fn remove_path(path: &Path) -> Result<(), StoreError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::io("remove", path, e))
        }
        _ => Ok(()),
    }
}

/// Entries of a directory, or none if it does not exist.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.path()).ctx("read directory", dir))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io("read directory", dir, e)),
    }
}

/// What a non-regular file is, in words.
fn kind_of(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Fails unless `path` is a regular file (after following symlinks), without opening it:
/// opening a FIFO blocks until a writer comes, so an import of one would hang forever.
pub(crate) fn require_regular(path: &Path) -> Result<fs::Metadata, StoreError> {
    let meta = fs::metadata(path).ctx("stat", path)?;
    if meta.is_file() {
        return Ok(meta);
    }
    Err(StoreError::NotRegularFile {
        path: path.to_path_buf(),
        kind: kind_of(&meta.file_type()),
    })
}

/// Opens a regular file for reading, refusing anything else before it can block: checked
/// first by name, then (the name may have been swapped meanwhile) on the open file, which
/// on Linux is opened non-blocking so that even a FIFO put there at the last moment returns.
pub(crate) fn open_regular(path: &Path) -> Result<File, StoreError> {
    require_regular(path)?;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // No effect on reads of a regular file.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).ctx("open", path)?;
    let meta = file.metadata().ctx("stat", path)?;
    if !meta.is_file() {
        return Err(StoreError::NotRegularFile {
            path: path.to_path_buf(),
            kind: kind_of(&meta.file_type()),
        });
    }
    Ok(file)
}

/// Reads until `buf` is full or the reader ends; returns how many bytes were read.
pub(crate) fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
