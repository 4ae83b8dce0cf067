//! One node per data dir: `node.lock` in the store root, locked (`flock`, through std's
//! `File::try_lock`) for as long as a node runs, and holding the pid and API address of the
//! node that holds it, so that a second node is refused at once with a message naming the
//! first. The lock goes with the process: a node that is killed leaves nothing to clean up.
//!
//! The one file in the store written in place rather than replaced: a rename would put a new,
//! unlocked inode under the name, and a third node would lock that one.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, StoreError};
use crate::store::Store;

/// Held while a node runs on this data dir; dropping it releases the dir.
#[derive(Debug)]
pub struct NodeLock {
    file: File,
    path: PathBuf,
}

impl Store {
    /// Takes the data dir for a node, or says which process has it.
    pub fn lock_node(&self) -> Result<NodeLock, StoreError> {
        let path = self.root().join("node.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx("open", &path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::NodeRunning {
                    dir: self.root().to_path_buf(),
                    holder: holder(&path),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &path, e)),
        }
        let mut lock = NodeLock { file, path };
        lock.write(None)?;
        Ok(lock)
    }
}

impl NodeLock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds the address the node's API listens on, for the message a second node gets.
    pub fn record_api_addr(&mut self, addr: &str) -> Result<(), StoreError> {
        self.write(Some(addr))
    }

    fn write(&mut self, addr: Option<&str>) -> Result<(), StoreError> {
        let mut text = format!("pid={}\n", std::process::id());
        if let Some(a) = addr {
            text.push_str(&format!("api={a}\n"));
        }
        // New content first, then the length: a reader never sees an empty file in between.
        self.file
            .write_all_at(text.as_bytes(), 0)
            .ctx("write", &self.path)?;
        self.file
            .set_len(text.len() as u64)
            .ctx("write", &self.path)?;
        self.file.sync_data().ctx("sync", &self.path)
    }
}

/// "pid 1234, API 127.0.0.1:7777", from what the holder wrote.
fn holder(path: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    match (field("pid"), field("api")) {
        (Some(pid), Some(api)) => format!("pid {pid}, API http://{api}"),
        (Some(pid), None) => format!("pid {pid}"),
        _ => format!("a process that holds {}", path.display()),
    }
}
