//! The API's edge against hostile and careless clients, over raw sockets to a real
//! `rbee-node join`: DNS rebinding (`Host`), other sites' pages (`Origin`, CORS), the token,
//! half-open connections, and bodies that are too big, of the wrong type or never arrive.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rbee_tests::{NodeProcess, rbee};

/// The `host:port` the node listens on.
fn addr(node: &NodeProcess) -> String {
    node.base.trim_start_matches("http://").to_string()
}

/// Sends `head` (request line and headers, without the blank line) plus `body` on a fresh
/// connection; returns the status, the raw header block (lower-cased) and the body.
fn raw(node: &NodeProcess, head: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr(node)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("{head}\r\nConnection: close\r\n\r\n{body}");
    // The server may answer (413) and close before taking all of a body it refuses.
    let _ = s.write_all(req.as_bytes());
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    // Read until the server closes; a reset after the response (the server did not read a
    // body it refused) keeps what arrived.
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn get(node: &NodeProcess, path: &str, headers: &str) -> (u16, String, String) {
    raw(node, &format!("GET {path} HTTP/1.1\r\n{headers}"), "")
}

#[test]
fn rebound_names_and_other_sites_pages_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let node = NodeProcess::start(&data, &[]);
    let port = addr(&node).rsplit(':').next().unwrap().to_string();

    for ok in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, _, body) = get(&node, "/v1/models", &format!("Host: {ok}"));
        assert_eq!(status, 200, "Host {ok}: {body}");
    }
    // A page whose name was rebound to 127.0.0.1 sends its own name.
    let (status, _, body) = get(&node, "/v1/models", &format!("Host: evil.example:{port}"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allowed-host evil.example"), "{body}");
    // ... and cannot drive the node: an import job it posts is refused before it exists.
    let model = tmp.path().join("secret.gguf");
    rbee_tests::write_random_gguf(&model, 1 << 20);
    let job = format!(
        r#"{{"operation":"model_import","path":"{}","name":"stolen"}}"#,
        model.display()
    );
    let (status, _, body) = raw(
        &node,
        &format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: evil.example:{port}\r\nContent-Type: application/json\r\nContent-Length: {}",
            job.len()
        ),
        &job,
    );
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("secret.gguf"), "{body}");
    let (_, _, jobs) = get(&node, "/v1/jobs", &format!("Host: 127.0.0.1:{port}"));
    assert!(!jobs.contains("model_import"), "{jobs}");

    // Another site's page on the real address: refused, since no CORS origin is configured.
    let (status, head, body) = get(
        &node,
        "/v1/models",
        &format!("Host: 127.0.0.1:{port}\r\nOrigin: http://evil.example"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--cors-origin http://evil.example"), "{body}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    // The node's own origin (a page it serves) is same-origin, not cross-origin.
    let (status, _, _) = get(
        &node,
        "/v1/models",
        &format!("Host: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}"),
    );
    assert_eq!(status, 200);
    drop(node);

    let node = NodeProcess::start(
        &data,
        &[
            "--allowed-host",
            "rbee.lan",
            "--cors-origin",
            "http://localhost:3000",
        ],
    );
    let port = addr(&node).rsplit(':').next().unwrap().to_string();
    assert_eq!(
        get(&node, "/v1/models", &format!("Host: rbee.lan:{port}")).0,
        200
    );
    assert_eq!(
        get(&node, "/v1/models", &format!("Host: other.lan:{port}")).0,
        403
    );
    // A preflight from the allowed origin is answered; the real request gets the header.
    let (status, head, _) = raw(
        &node,
        &format!(
            "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://localhost:3000\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type, authorization"
        ),
        "",
    );
    assert!((200..300).contains(&status), "{status} {head}");
    assert!(
        head.contains("access-control-allow-origin: http://localhost:3000"),
        "{head}"
    );
    let (status, head, _) = get(
        &node,
        "/v1/models",
        &format!("Host: 127.0.0.1:{port}\r\nOrigin: http://localhost:3000"),
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("access-control-allow-origin: http://localhost:3000"),
        "{head}"
    );
    let (status, _, _) = get(
        &node,
        "/v1/models",
        &format!("Host: 127.0.0.1:{port}\r\nOrigin: http://localhost:3001"),
    );
    assert_eq!(status, 403);
}

#[test]
fn the_token_comes_from_a_flag_file_or_environment_and_is_checked_as_rfc_6750_says() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "from-a-file\n").unwrap();
    let node = NodeProcess::start(&data, &["--api-token-file", token_file.to_str().unwrap()]);
    let host = format!("Host: {}", addr(&node));
    let (status, head, body) = get(&node, "/v1/models", &host);
    assert_eq!(status, 401, "{body}");
    assert!(
        head.contains("www-authenticate: bearer realm=\"rbee\""),
        "{head}"
    );
    let (status, head, _) = get(
        &node,
        "/v1/models",
        &format!("{host}\r\nAuthorization: Bearer from-a-fil"),
    );
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate"), "{head}");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, _, body) = get(
            &node,
            "/v1/models",
            &format!("{host}\r\nAuthorization: {scheme} from-a-file"),
        );
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    // The CLI talking to the running node reads the same file.
    let status = |token_file: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(rbee_tests::rbee_node_bin());
        cmd.arg("--data-dir")
            .arg(&data)
            .arg("status")
            .env("RBEE_API_ADDR", addr(&node))
            .env("XDG_CONFIG_HOME", tmp.path().join("no-config"));
        if let Some(f) = token_file {
            cmd.env("RBEE_API_TOKEN_FILE", f);
        }
        cmd.output().unwrap()
    };
    let out = status(Some(&token_file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = status(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RBEE_API_TOKEN_FILE"));
    // The token never shows in the process's arguments.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", node.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("from-a-file"));
    drop(node);

    let node = NodeProcess::start_with_env(&data, &[], &[("RBEE_API_TOKEN", "from-the-env")]);
    let host = format!("Host: {}", addr(&node));
    assert_eq!(get(&node, "/v1/models", &host).0, 401);
    let (status, _, _) = get(
        &node,
        "/v1/models",
        &format!("{host}\r\nAuthorization: Bearer from-the-env"),
    );
    assert_eq!(status, 200);
    drop(node);

    // Settings that cannot be meant are refused at start, each saying what to give instead.
    for (args, expect) in [
        (vec!["--api-token", " "], "without spaces"),
        (vec!["--api-token", "two words"], "without spaces"),
        (vec!["--memory-budget", "0"], "at least 1MiB"),
        (
            vec!["--memory-budget", "1000TiB"],
            "more than this machine's RAM",
        ),
        (vec!["--cors-origin", "localhost:3000"], "scheme://host"),
        (vec!["--max-connections", "0"], "max_connections"),
    ] {
        let mut cmd = vec!["join", "--api-addr", "127.0.0.1:0"];
        cmd.extend(&args);
        let out = rbee(&data, &cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let out = rbee(
        &data,
        &[
            "join",
            "--api-addr",
            "127.0.0.1:0",
            "--api-token",
            "a",
            "--api-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("give one"));
}

#[test]
fn half_open_connections_cannot_lock_out_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let node = NodeProcess::start_with_env(
        &data,
        &["--max-connections", "4", "--api-token", "s3cret"],
        &[("RBEE_HEADER_TIMEOUT_SECS", "2")],
    );
    // Every connection slot held by a client that never finishes its headers (and has no
    // token: the limits apply before authentication).
    let mut stuck: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(addr(&node)).unwrap();
            s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let (status, _, body) = get(
        &node,
        "/v1/models",
        &format!("Host: {}\r\nAuthorization: Bearer s3cret", addr(&node)),
    );
    assert_eq!(status, 200, "{body}");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "the client with the token waited {waited:?}"
    );
    // The stalled ones were closed by the server, not left to hold descriptors.
    for s in &mut stuck {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 512];
        let ended = match s.read(&mut buf) {
            Ok(_) => true, // EOF, or a 408 before closing
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(ended, "a half-open connection is still held");
    }
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(addr(&node)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let _ = idle.read(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(14),
        "an idle connection was kept"
    );
}

#[test]
fn bodies_are_bounded_in_size_type_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let node = NodeProcess::start_with_env(&data, &[], &[("RBEE_BODY_TIMEOUT_SECS", "1")]);
    let host = format!("Host: {}", addr(&node));
    let post = |headers: &str| format!("POST /v1/chat/completions HTTP/1.1\r\n{host}\r\n{headers}");

    // A declared length far over the cap is refused at once, naming the limit.
    let t = Instant::now();
    let (status, _, body) = raw(
        &node,
        &post("Content-Type: application/json\r\nContent-Length: 1000000000000000000"),
        "{}",
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limit of 4194304 bytes"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // A chunked body that grows past it is cut off when it does.
    let chunk = "x".repeat(1 << 20);
    let mut chunked = String::new();
    for _ in 0..5 {
        chunked.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    chunked.push_str("0\r\n\r\n");
    let (status, _, body) = raw(
        &node,
        &post("Content-Type: application/json\r\nTransfer-Encoding: chunked"),
        &chunked,
    );
    assert_eq!(status, 413, "{body}");

    let json = r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, body) = raw(
        &node,
        &post(&format!(
            "Content-Type: text/plain\r\nContent-Length: {}",
            json.len()
        )),
        json,
    );
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("application/json"), "{body}");
    let (status, _, body) = raw(
        &node,
        &post(&format!("Content-Length: {}", json.len())),
        json,
    );
    assert_eq!(status, 415, "{body}");
    // With the right type the same body reaches the handler (no such model: 404).
    let (status, _, body) = raw(
        &node,
        &post(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}",
            json.len()
        )),
        json,
    );
    assert_eq!(status, 404, "{body}");

    // A body that never arrives in full ends in 408 after the body timeout.
    let mut s = TcpStream::connect(addr(&node)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        post("Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"").as_bytes(),
    )
    .unwrap();
    let t = Instant::now();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 408, "{body}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // An unknown route is a JSON 404 naming it, not an empty body.
    let (status, _, body) = get(&node, "/v1/nope", &host);
    assert_eq!(status, 404);
    assert!(body.contains("/v1/nope"), "{body}");
}
