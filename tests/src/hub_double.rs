//! A HuggingFace Hub double on 127.0.0.1: the routes and headers hf-hub and rbee-hub use.
//!
//! - `GET /api/models/{org}/{repo}/revision/{rev}` → `{id, sha, siblings: [{rfilename, size,
//!   blobId, lfs: {sha256, size}}]}`
//! - `GET /{org}/{repo}/resolve/{rev}/{file}` → LFS files: `302` to `/cdn/{sha256}` with `ETag`,
//!   `X-Linked-Etag`, `X-Repo-Commit`, `X-Linked-Size`; small files: `200` with `ETag` (the git
//!   blob id) and `X-Repo-Commit`; both honour `Range` (`206` + `Content-Range`)
//! - `GET /cdn/{sha256}` → the bytes, with `Range`
//! - `GET /api/models?search=&sort=downloads&limit=&filter=gguf` → `[{id, downloads, likes, tags}]`
//!
//! Gated repos answer 401 without a token and 403 with a wrong one. Per file, the double can
//! drop the connection after N bytes (once), pause after N bytes until released, or serve bytes
//! that do not match the hash it advertises. It counts the body bytes it serves per file and
//! records every request, and whether a token ever reached the CDN path.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use sha1::Digest as _;

/// One file of a repo.
#[derive(Debug, Clone)]
pub struct DoubleFile {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Served through the CDN redirect with a sha256, like HF's LFS files.
    pub lfs: bool,
}

impl DoubleFile {
    pub fn lfs(name: &str, bytes: Vec<u8>) -> Self {
        DoubleFile {
            name: name.into(),
            bytes,
            lfs: true,
        }
    }

    pub fn small(name: &str, bytes: Vec<u8>) -> Self {
        DoubleFile {
            name: name.into(),
            bytes,
            lfs: false,
        }
    }

    pub fn sha256(&self) -> String {
        hex(&sha2::Sha256::digest(&self.bytes))
    }

    pub fn blob_id(&self) -> String {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", self.bytes.len()).as_bytes());
        h.update(&self.bytes);
        hex(&h.finalize())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A search result the double returns.
#[derive(Debug, Clone)]
pub struct SearchEntry {
    pub id: String,
    pub downloads: u64,
    pub likes: u64,
    pub gguf: bool,
}

#[derive(Debug, Default)]
struct Repo {
    /// revision name → commit; the commit itself also resolves.
    revisions: HashMap<String, String>,
    /// commit → files.
    files: HashMap<String, Vec<DoubleFile>>,
    token: Option<String>,
}

/// Pauses a transfer after some bytes until [`Gate::release`].
#[derive(Debug, Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    reached: Mutex<bool>,
    reached_cv: Condvar,
}

impl Gate {
    pub fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    /// Blocks until a transfer has reached the gate.
    pub fn wait_reached(&self) {
        let mut r = self.reached.lock().unwrap();
        while !*r {
            r = self.reached_cv.wait(r).unwrap();
        }
    }

    fn pass(&self) {
        *self.reached.lock().unwrap() = true;
        self.reached_cv.notify_all();
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
}

#[derive(Debug, Default)]
struct State {
    repos: HashMap<String, Repo>,
    search: Vec<SearchEntry>,
    /// file name → bytes to serve before dropping the connection (once).
    drop_after: HashMap<String, u64>,
    /// file name → (bytes, gate).
    pause_after: HashMap<String, (u64, Arc<Gate>)>,
    /// file name → corrupted bytes served instead of the real ones.
    corrupt: HashMap<String, Vec<u8>>,
    /// file name → the ETag the resolve route claims instead of the real one.
    etag: HashMap<String, String>,
    served: HashMap<String, u64>,
    requests: Vec<String>,
}

/// The running double; it serves until the process ends.
#[derive(Debug, Clone)]
pub struct HubDouble {
    pub endpoint: String,
    /// The "CDN" LFS downloads are redirected to: another origin, as on the real hub.
    pub cdn: String,
    state: Arc<Mutex<State>>,
    token_leaked: Arc<AtomicBool>,
}

pub const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

impl HubDouble {
    pub fn start() -> HubDouble {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let double = HubDouble {
            endpoint: format!("http://{}", hub.local_addr().unwrap()),
            cdn: format!("http://{}", cdn.local_addr().unwrap()),
            state: Arc::default(),
            token_leaked: Arc::default(),
        };
        for listener in [hub, cdn] {
            let d = double.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let d = d.clone();
                    std::thread::spawn(move || d.serve(stream));
                }
            });
        }
        double
    }

    /// Adds `files` to `repo` at `commit`, reachable as revision `main` too unless `rev` names
    /// another branch.
    pub fn add(&self, repo: &str, rev: &str, commit: &str, files: Vec<DoubleFile>) {
        let mut st = self.state.lock().unwrap();
        let r = st.repos.entry(repo.into()).or_default();
        r.revisions.insert(rev.into(), commit.into());
        r.files.insert(commit.into(), files);
    }

    pub fn gate(&self, repo: &str, token: &str) {
        self.state
            .lock()
            .unwrap()
            .repos
            .entry(repo.into())
            .or_default()
            .token = Some(token.into());
    }

    pub fn add_search(&self, e: SearchEntry) {
        self.state.lock().unwrap().search.push(e);
    }

    pub fn drop_after(&self, file: &str, bytes: u64) {
        self.state
            .lock()
            .unwrap()
            .drop_after
            .insert(file.into(), bytes);
    }

    pub fn pause_after(&self, file: &str, bytes: u64) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.state
            .lock()
            .unwrap()
            .pause_after
            .insert(file.into(), (bytes, gate.clone()));
        gate
    }

    pub fn corrupt(&self, file: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .corrupt
            .insert(file.into(), bytes);
    }

    /// Makes the resolve route announce `etag` for `file` (the listing keeps the real one).
    pub fn etag(&self, file: &str, etag: &str) {
        self.state
            .lock()
            .unwrap()
            .etag
            .insert(file.into(), etag.into());
    }

    /// Body bytes served for `file` so far (all requests).
    pub fn served(&self, file: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .served
            .get(file)
            .copied()
            .unwrap_or(0)
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn token_leaked(&self) -> bool {
        self.token_leaked.load(Ordering::Relaxed)
    }

    fn serve(&self, mut stream: TcpStream) {
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let range = headers.get("range").cloned();
        self.state.lock().unwrap().requests.push(format!(
            "GET {target}{}",
            range
                .as_deref()
                .map(|r| format!(" [{r}]"))
                .unwrap_or_default()
        ));
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query: HashMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), decode(v)))
            .collect();
        let auth = headers.get("authorization").cloned();
        if let Some(rest) = path.strip_prefix("/cdn/") {
            if auth.is_some() {
                self.token_leaked.store(true, Ordering::Relaxed);
            }
            return self.cdn(&mut stream, rest, range.as_deref());
        }
        if path == "/api/models" {
            return self.search(&mut stream, &query);
        }
        if let Some(rest) = path.strip_prefix("/api/models/") {
            let Some((repo, rev)) = rest.split_once("/revision/") else {
                return respond(&mut stream, 404, &[], b"{\"error\":\"not found\"}");
            };
            return self.listing(&mut stream, repo, &decode(rev), auth.as_deref());
        }
        let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        if parts.len() == 5 && parts[2] == "resolve" {
            let repo = format!("{}/{}", parts[0], parts[1]);
            return self.resolve(
                &mut stream,
                &repo,
                &decode(parts[3]),
                &decode(parts[4]),
                auth.as_deref(),
                range.as_deref(),
            );
        }
        respond(&mut stream, 404, &[], b"not found");
    }

    /// None: answered with an error already.
    fn files_at(
        &self,
        stream: &mut TcpStream,
        repo: &str,
        rev: &str,
        auth: Option<&str>,
    ) -> Option<(String, Vec<DoubleFile>)> {
        let st = self.state.lock().unwrap();
        let Some(r) = st.repos.get(repo) else {
            respond(stream, 404, &[], b"{\"error\":\"Repository not found\"}");
            return None;
        };
        if let Some(token) = &r.token {
            match auth {
                None => {
                    respond(
                        stream,
                        401,
                        &[],
                        b"{\"error\":\"Access to model is restricted\"}",
                    );
                    return None;
                }
                Some(a) if a != format!("Bearer {token}") => {
                    respond(stream, 403, &[], b"{\"error\":\"Forbidden\"}");
                    return None;
                }
                _ => {}
            }
        }
        let commit = r
            .revisions
            .get(rev)
            .cloned()
            .or_else(|| r.files.contains_key(rev).then(|| rev.to_string()));
        let Some(commit) = commit else {
            respond(stream, 404, &[], b"{\"error\":\"Invalid rev id\"}");
            return None;
        };
        let files = r.files.get(&commit).cloned().unwrap_or_default();
        Some((commit, files))
    }

    fn listing(&self, stream: &mut TcpStream, repo: &str, rev: &str, auth: Option<&str>) {
        let Some((commit, files)) = self.files_at(stream, repo, rev, auth) else {
            return;
        };
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                let mut s = serde_json::json!({
                    "rfilename": f.name, "size": f.bytes.len(), "blobId": f.blob_id(),
                });
                if f.lfs {
                    s["lfs"] = serde_json::json!({"sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": 134});
                }
                s
            })
            .collect();
        let body =
            serde_json::json!({"id": repo, "modelId": repo, "sha": commit, "siblings": siblings});
        respond(
            stream,
            200,
            &[("content-type", "application/json".into())],
            body.to_string().as_bytes(),
        );
    }

    fn resolve(
        &self,
        stream: &mut TcpStream,
        repo: &str,
        rev: &str,
        file: &str,
        auth: Option<&str>,
        range: Option<&str>,
    ) {
        let Some((commit, files)) = self.files_at(stream, repo, rev, auth) else {
            return;
        };
        let Some(f) = files.iter().find(|f| f.name == file) else {
            respond(
                stream,
                404,
                &[("x-error-code", "EntryNotFound".into())],
                b"Entry not found",
            );
            return;
        };
        let claimed = self.state.lock().unwrap().etag.get(&f.name).cloned();
        if f.lfs {
            let sha = f.sha256();
            let tag = claimed.unwrap_or_else(|| sha.clone());
            let headers = [
                (
                    "location",
                    format!("{}/cdn/{sha}?name={}", self.cdn, encode(&f.name)),
                ),
                ("etag", format!("\"{tag}\"")),
                ("x-linked-etag", format!("\"{tag}\"")),
                ("x-linked-size", f.bytes.len().to_string()),
                ("x-repo-commit", commit),
            ];
            return respond(stream, 302, &headers, b"");
        }
        let extra = [
            (
                "etag",
                format!("\"{}\"", claimed.unwrap_or_else(|| f.blob_id())),
            ),
            ("x-repo-commit", commit),
        ];
        self.send_file(stream, f, range, &extra);
    }

    fn cdn(&self, stream: &mut TcpStream, rest: &str, range: Option<&str>) {
        let (sha, _) = rest.split_once('?').unwrap_or((rest, ""));
        let found = {
            let st = self.state.lock().unwrap();
            st.repos
                .values()
                .flat_map(|r| r.files.values().flatten())
                .find(|f| f.lfs && f.sha256() == sha)
                .cloned()
        };
        match found {
            Some(f) => self.send_file(stream, &f, range, &[]),
            None => respond(stream, 404, &[], b"no such object"),
        }
    }

    fn send_file(
        &self,
        stream: &mut TcpStream,
        f: &DoubleFile,
        range: Option<&str>,
        extra: &[(&str, String)],
    ) {
        let (bytes, drop_at, pause) = {
            let mut st = self.state.lock().unwrap();
            let bytes = st
                .corrupt
                .get(&f.name)
                .cloned()
                .unwrap_or_else(|| f.bytes.clone());
            (
                bytes,
                st.drop_after.remove(&f.name),
                st.pause_after.get(&f.name).cloned(),
            )
        };
        let total = bytes.len() as u64;
        let start = range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<u64>().ok());
        let mut headers: Vec<(&str, String)> = extra.to_vec();
        let (status, from) = match start {
            Some(s) if s >= total => {
                headers.push(("content-range", format!("bytes */{total}")));
                return respond(stream, 416, &headers, b"");
            }
            Some(s) => {
                headers.push(("content-range", format!("bytes {s}-{}/{total}", total - 1)));
                (206, s)
            }
            None => (200, 0),
        };
        headers.push(("content-length", (total - from).to_string()));
        headers.push(("accept-ranges", "bytes".into()));
        if write_head(stream, status, &headers).is_err() {
            return;
        }
        let mut pos = from;
        let mut paused = false;
        for chunk in bytes[from as usize..].chunks(4096) {
            let mut chunk = chunk;
            if let Some(d) = drop_at
                && pos + chunk.len() as u64 > d
            {
                chunk = &chunk[..(d.saturating_sub(pos)) as usize];
                let _ = stream.write_all(chunk);
                self.count(&f.name, chunk.len() as u64);
                let _ = stream.flush();
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
            if let Some((at, gate)) = &pause
                && pos >= *at
                && !paused
            {
                paused = true;
                let _ = stream.flush();
                gate.pass();
            }
            if stream.write_all(chunk).is_err() {
                return;
            }
            self.count(&f.name, chunk.len() as u64);
            pos += chunk.len() as u64;
        }
        let _ = stream.flush();
    }

    fn count(&self, file: &str, n: u64) {
        *self
            .state
            .lock()
            .unwrap()
            .served
            .entry(file.into())
            .or_default() += n;
    }

    fn search(&self, stream: &mut TcpStream, query: &HashMap<String, String>) {
        let q = query
            .get("search")
            .cloned()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(10);
        let gguf_only = query.get("filter").is_some_and(|f| f == "gguf");
        let mut hits: Vec<SearchEntry> = self
            .state
            .lock()
            .unwrap()
            .search
            .iter()
            .filter(|e| e.id.to_ascii_lowercase().contains(&q))
            .filter(|e| e.gguf || !gguf_only)
            .cloned()
            .collect();
        if query.get("sort").is_some_and(|s| s == "downloads") {
            hits.sort_by_key(|h| std::cmp::Reverse(h.downloads));
        }
        hits.truncate(limit);
        let body: Vec<serde_json::Value> = hits
            .iter()
            .map(|h| {
                let tags: Vec<&str> = if h.gguf { vec!["gguf", "llama"] } else { vec!["transformers"] };
                serde_json::json!({"id": h.id, "modelId": h.id, "downloads": h.downloads, "likes": h.likes, "tags": tags})
            })
            .collect();
        respond(
            stream,
            200,
            &[("content-type", "application/json".into())],
            serde_json::Value::Array(body).to_string().as_bytes(),
        );
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    }
}

fn write_head(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nconnection: close\r\n",
        reason(status)
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut h = headers.to_vec();
    h.push(("content-length", body.len().to_string()));
    if write_head(stream, status, &h).is_ok() {
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else if b[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
