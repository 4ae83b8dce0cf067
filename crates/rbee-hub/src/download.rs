//! Resumable, verified, cancellable downloads into the HF cache layout.
//!
//! Per file: `blobs/<etag>` is the finished file, `blobs/<etag>.part` the bytes so far (kept
//! across failures and cancellation so the next attempt sends `Range: bytes=<len>-`), and
//! `blobs/<etag>.lock` an advisory lock held while downloading, so two pulls of the same file,
//! in one process or in two, download it once: the second waits (reporting the first one's
//! progress) and then finds the blob. A blob is renamed into place only after its size and the
//! hub's hash (SHA-256 for LFS files, the git blob SHA-1 otherwise) check out; a mismatch deletes
//! the partial file. `snapshots/<commit>/<name>` is a relative symlink to the blob, as HF does.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha1::Digest as _;

use crate::plan::{PlanKind, SAFETENSORS_INDEX, add_shards};
use crate::{Hub, HubError, MAX_JSON, Plan, RemoteFile, origin};

/// Transfer attempts in a row that receive nothing before a file is given up (each resumes
/// where the last one stopped).
const ATTEMPTS: u32 = 4;
const MAX_REDIRECTS: usize = 8;
const CHUNK: usize = 256 << 10;
/// How often a pull waiting for another one's download looks again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Where a pull's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// `<cache>/models--org--repo/snapshots/<commit>`.
    pub snapshot: PathBuf,
    /// Each planned file in the snapshot, in plan order.
    pub files: Vec<PathBuf>,
    /// Bytes this call received from the network (0 when everything was cached).
    pub transferred: u64,
}

/// Checked between chunks; true means stop.
pub type Cancel<'a> = &'a (dyn Fn() -> bool + Sync);

struct Ctx<'a> {
    hub: &'a Hub,
    plan: &'a Plan,
    cancel: Cancel<'a>,
    progress: &'a mut dyn FnMut(u64, u64),
    /// Bytes of the plan's files finished before the current one.
    base: u64,
    total: u64,
    transferred: u64,
}

impl Ctx<'_> {
    fn report(&mut self, in_file: u64) {
        (self.progress)((self.base + in_file).min(self.total), self.total);
    }
}

impl Hub {
    /// Resolves `hf`, completes a safetensors plan with the shards its index names, and
    /// downloads every file. Returns the plan that was fetched and where its files are.
    pub fn pull(
        &self,
        hf: &rbee_proto::HfRef,
        cancel: Cancel<'_>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(Plan, Downloaded), HubError> {
        let listing = self.listing(&hf.repo, hf.revision_or_main())?;
        let mut plan = crate::plan(&listing, hf.file.as_deref())?;
        if plan.kind == PlanKind::Safetensors
            && let Some(index) = plan.files.iter().find(|f| f.name == SAFETENSORS_INDEX)
        {
            let index = index.clone();
            if index.size > MAX_JSON {
                return Err(HubError::BadResponse(format!(
                    "{}: {SAFETENSORS_INDEX} is larger than {MAX_JSON} bytes",
                    plan.repo
                )));
            }
            let one = Plan {
                files: vec![index],
                ..plan.clone()
            };
            let got = self.download(&one, cancel, &mut |_, _| {})?;
            let path = got.files.first().cloned().unwrap_or_default();
            let bytes = fs::read(&path).map_err(|e| HubError::io("read", &path, e))?;
            add_shards(&mut plan, &listing, &bytes)?;
        }
        let downloaded = self.download(&plan, cancel, progress)?;
        Ok((plan, downloaded))
    }

    /// Downloads the plan's files into the HF cache (skipping those already there), then points
    /// `refs/<revision>` at the commit.
    pub fn download(
        &self,
        plan: &Plan,
        cancel: Cancel<'_>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Downloaded, HubError> {
        let cache_repo = self.cache.repo(self.repo(&plan.repo, &plan.revision));
        let repo_dir = self
            .cache_dir()
            .join(self.repo(&plan.repo, "main").folder_name());
        let snapshot = cache_repo.pointer_path(&plan.commit);
        let mut ctx = Ctx {
            hub: self,
            plan,
            cancel,
            progress,
            base: 0,
            total: plan.total_size(),
            transferred: 0,
        };
        let mut files = Vec::with_capacity(plan.files.len());
        for f in &plan.files {
            if (ctx.cancel)() {
                return Err(HubError::Cancelled);
            }
            let blob = cache_repo.blob_path(f.etag());
            fetch_blob(&mut ctx, f, &blob)?;
            let pointer = snapshot.join(&f.name);
            link_pointer(&blob, &pointer)?;
            files.push(pointer);
            ctx.base += f.size;
            ctx.report(0);
        }
        if plan.revision != plan.commit {
            let ref_path = repo_dir.join("refs").join(&plan.revision);
            write_atomic(&ref_path, plan.commit.as_bytes())?;
        }
        Ok(Downloaded {
            snapshot,
            files,
            transferred: ctx.transferred,
        })
    }

    fn resolve_url(&self, plan: &Plan, file: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            plan.repo,
            plan.commit,
            encode_path(file)
        )
    }
}

/// Gets `f` into `blob`, downloading (or waiting for another pull's download) as needed.
fn fetch_blob(ctx: &mut Ctx<'_>, f: &RemoteFile, blob: &Path) -> Result<(), HubError> {
    if is_complete(blob, f.size) {
        return Ok(());
    }
    let dir = blob.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| HubError::io("create", dir, e))?;
    let part = blob.with_extension("part");
    let lock_path = blob.with_extension("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| HubError::io("open", &lock_path, e))?;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) => {
                // Another pull is downloading this file: follow its progress.
                if (ctx.cancel)() {
                    return Err(HubError::Cancelled);
                }
                let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                ctx.report(have);
                std::thread::sleep(WAIT_POLL);
            }
            Err(fs::TryLockError::Error(e)) => return Err(HubError::io("lock", &lock_path, e)),
        }
    }
    // The lock is released when `lock` is dropped, on every path out of here.
    if is_complete(blob, f.size) {
        return Ok(());
    }
    // Attempts that got nowhere; one that made progress starts the count again.
    let mut attempt = 0;
    let mut kept_before = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    loop {
        attempt += 1;
        match transfer(ctx, f, &part) {
            Ok(()) => break,
            Err(HubError::Interrupted { reason, kept, .. })
                if attempt < ATTEMPTS || kept > kept_before =>
            {
                if kept > kept_before {
                    attempt = 0;
                    kept_before = kept;
                }
                tracing::warn!(file = %f.name, attempt, "download interrupted, resuming: {reason}");
                sleep_unless_cancelled(
                    ctx.cancel,
                    Duration::from_millis(250 * u64::from(attempt)),
                )?;
            }
            Err(e) => return Err(e),
        }
    }
    verify(ctx, f, &part)?;
    fs::rename(&part, blob).map_err(|e| HubError::io("rename", &part, e))?;
    sync_dir(dir);
    drop(lock);
    let _ = fs::remove_file(&lock_path);
    Ok(())
}

fn is_complete(blob: &Path, size: u64) -> bool {
    fs::metadata(blob).is_ok_and(|m| m.is_file() && m.len() == size)
}

fn sleep_unless_cancelled(cancel: Cancel<'_>, total: Duration) -> Result<(), HubError> {
    let end = Instant::now() + total;
    while Instant::now() < end {
        if cancel() {
            return Err(HubError::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

/// One HTTP attempt: appends to `part` from its current length.
fn transfer(ctx: &mut Ctx<'_>, f: &RemoteFile, part: &Path) -> Result<(), HubError> {
    let mut out = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(part)
        .map_err(|e| HubError::io("open", part, e))?;
    let mut start = out
        .metadata()
        .map_err(|e| HubError::io("stat", part, e))?
        .len();
    if start > f.size {
        start = 0;
    }
    out.set_len(start)
        .map_err(|e| HubError::io("truncate", part, e))?;
    if start == f.size {
        return Ok(());
    }
    let interrupted = |kept: u64, reason: String| HubError::Interrupted {
        file: f.name.clone(),
        kept,
        total: f.size,
        reason,
    };
    let hub = ctx.hub;
    let mut url = hub.resolve_url(ctx.plan, &f.name);
    let mut hop = 0;
    let resp = loop {
        let req = hub
            .agent
            .get(&url)
            .header("accept-encoding", "identity")
            .header("range", format!("bytes={start}-"));
        let resp = match hub.with_auth(&url, req).call() {
            Ok(r) => r,
            Err(e) => return Err(interrupted(start, e.to_string())),
        };
        let status = resp.status().as_u16();
        if hop == 0 && status < 400 {
            check_hub_headers(ctx, f, resp.headers())?;
        }
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            break resp;
        }
        hop += 1;
        if hop > MAX_REDIRECTS {
            return Err(HubError::BadResponse(format!(
                "more than {MAX_REDIRECTS} redirects for {}",
                f.name
            )));
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                HubError::BadResponse(format!("redirect without Location for {}", f.name))
            })?;
        url = join_url(&url, location);
    };
    let status = resp.status().as_u16();
    match status {
        206 => {
            let range = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if range_start(range) != Some(start) {
                return Err(HubError::BadResponse(format!(
                    "asked for {} from byte {start}, got Content-Range `{range}`",
                    f.name
                )));
            }
        }
        200 => {
            // The server ignored the range: start over.
            start = 0;
            out.set_len(0)
                .map_err(|e| HubError::io("truncate", part, e))?;
        }
        416 => {
            // Our partial file does not fit the server's idea of the file: start over.
            out.set_len(0)
                .map_err(|e| HubError::io("truncate", part, e))?;
            return Err(interrupted(0, "range not satisfiable".into()));
        }
        other => {
            return Err(HubError::from_status(
                other,
                &ctx.plan.repo,
                Some(&ctx.plan.revision),
                Some(&f.name),
            )
            .token_was_sent(hub.config.token.is_some()));
        }
    }
    out.seek(SeekFrom::Start(start))
        .map_err(|e| HubError::io("seek", part, e))?;
    let mut reader = resp
        .into_body()
        .into_with_config()
        .limit(f.size - start)
        .reader();
    let mut buf = vec![0u8; CHUNK];
    let mut have = start;
    ctx.report(have);
    loop {
        if (ctx.cancel)() {
            let _ = out.sync_data();
            return Err(HubError::Cancelled);
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = out.sync_data();
                return Err(interrupted(have, e.to_string()));
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| HubError::io("write", part, e))?;
        have += n as u64;
        ctx.transferred += n as u64;
        ctx.report(have);
    }
    out.sync_data().map_err(|e| HubError::io("sync", part, e))?;
    if have < f.size {
        return Err(interrupted(have, "the connection closed early".into()));
    }
    Ok(())
}

/// On the hub's own answer (before any redirect to a CDN): the ETag must be the one the listing
/// gave, and the commit the one we asked for.
fn check_hub_headers(
    ctx: &Ctx<'_>,
    f: &RemoteFile,
    headers: &ureq::http::HeaderMap,
) -> Result<(), HubError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(served) = get("x-linked-etag").or_else(|| get("etag")) {
        let served = served
            .trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_ascii_lowercase();
        if served != f.etag() {
            return Err(HubError::EtagChanged {
                repo: ctx.plan.repo.clone(),
                file: f.name.clone(),
                listed: f.etag().to_string(),
                served,
            });
        }
    }
    if let Some(commit) = get("x-repo-commit")
        && !commit.eq_ignore_ascii_case(&ctx.plan.commit)
    {
        return Err(HubError::BadResponse(format!(
            "{}: asked for commit {}, the hub served {commit}",
            f.name, ctx.plan.commit
        )));
    }
    Ok(())
}

/// Size, then the hub's hash; a mismatch deletes the partial file (it can never become right).
fn verify(ctx: &Ctx<'_>, f: &RemoteFile, part: &Path) -> Result<(), HubError> {
    let mut file = File::open(part).map_err(|e| HubError::io("open", part, e))?;
    let len = file
        .metadata()
        .map_err(|e| HubError::io("stat", part, e))?
        .len();
    let (algorithm, expected, actual) = match &f.sha256 {
        Some(sha) => {
            let mut h = sha2::Sha256::new();
            copy_into(&mut file, part, &mut h, ctx.cancel)?;
            ("sha256", sha.clone(), hex(&h.finalize()))
        }
        None => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            copy_into(&mut file, part, &mut h, ctx.cancel)?;
            ("git blob sha1", f.blob_id.clone(), hex(&h.finalize()))
        }
    };
    if len != f.size || actual != expected {
        let _ = fs::remove_file(part);
        return Err(HubError::Integrity {
            repo: ctx.plan.repo.clone(),
            file: f.name.clone(),
            algorithm,
            expected: if len != f.size {
                format!("{expected} ({} bytes)", f.size)
            } else {
                expected
            },
            actual: if len != f.size {
                format!("{actual} ({len} bytes)")
            } else {
                actual
            },
        });
    }
    Ok(())
}

fn copy_into(
    file: &mut File,
    path: &Path,
    h: &mut impl sha1::Digest,
    cancel: Cancel<'_>,
) -> Result<(), HubError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cancel() {
            return Err(HubError::Cancelled);
        }
        let n = file
            .read(&mut buf)
            .map_err(|e| HubError::io("read", path, e))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `snapshots/<commit>/<name>` → `../../blobs/<etag>` (relative, as HF writes it).
fn link_pointer(blob: &Path, pointer: &Path) -> Result<(), HubError> {
    let dir = pointer.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| HubError::io("create", dir, e))?;
    let blobs_dir = blob.parent().unwrap_or(Path::new("."));
    let repo_dir = blobs_dir.parent().unwrap_or(Path::new("."));
    let depth = pointer
        .strip_prefix(repo_dir)
        .map(|p| p.components().count().saturating_sub(1))
        .unwrap_or(0);
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    if fs::read_link(pointer).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = pointer.with_file_name(format!(
        ".{}.tmp-{}",
        pointer.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(|e| HubError::io("link", &tmp, e))?;
    fs::rename(&tmp, pointer).map_err(|e| HubError::io("rename", pointer, e))?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| HubError::io("create", dir, e))?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(|e| HubError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| HubError::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| HubError::io("rename", path, e))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Percent-encodes a repo file path for a URL, keeping `/`.
fn encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Resolves a redirect's Location against the URL it came from.
fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let Some(origin) = origin(base) else {
        return location.to_string();
    };
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = &base[origin.len()..];
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    format!("{origin}{dir}/{location}")
}

/// The first byte of `bytes a-b/total`.
fn range_start(content_range: &str) -> Option<u64> {
    let rest = content_range.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_ranges() {
        assert_eq!(encode_path("sub/a b+c.gguf"), "sub/a%20b%2Bc.gguf");
        assert_eq!(
            join_url("http://h:1/o/r/resolve/c/f", "/cdn/x?sig=1"),
            "http://h:1/cdn/x?sig=1"
        );
        assert_eq!(join_url("http://h:1/a/b", "c"), "http://h:1/a/c");
        assert_eq!(join_url("http://h:1/a/b", "https://cdn/x"), "https://cdn/x");
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
    }

    #[test]
    fn pointers_are_relative_symlinks_into_blobs() {
        let tmp = std::env::temp_dir().join(format!("rbee-hub-link-{}", std::process::id()));
        let blob = tmp.join("models--o--r/blobs/abc");
        fs::create_dir_all(blob.parent().unwrap()).unwrap();
        fs::write(&blob, b"x").unwrap();
        let pointer = tmp.join("models--o--r/snapshots/c0/sub/f.gguf");
        link_pointer(&blob, &pointer).unwrap();
        link_pointer(&blob, &pointer).unwrap();
        assert_eq!(
            fs::read_link(&pointer).unwrap(),
            PathBuf::from("../../../blobs/abc")
        );
        assert_eq!(fs::read(&pointer).unwrap(), b"x");
        fs::remove_dir_all(&tmp).unwrap();
    }
}
