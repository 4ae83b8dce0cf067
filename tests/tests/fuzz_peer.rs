//! A hostile pool member: a real libp2p peer (pnet + noise, the pool's key) that opens
//! `/rbee/infer/2` and `/rbee/shard/1` streams to a real `rbee-node join` and sends garbage,
//! truncated and mutated frames, lying length headers, and nothing at all. The in-process
//! fuzz suite (`crates/rbee-node/tests/fuzz_wire.rs`) covers the readers case by case; this
//! one checks the serving loops over real sockets: every stream ends (an error frame or a
//! close, within the protocol's timeouts), and afterwards the node still serves a peer's
//! generation and its HTTP API, and logged no panic.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::Prompt;
use rbee_infer::sampling::SamplingParams;
use rbee_proto::infer::{InferFrame, InferRequest};
use rbee_proto::pool::{INFER_PROTOCOL, SHARD_PROTOCOL};
use rbee_proto::shard::{ShardReply, ShardRequest};
use rbee_proto::{ContentId, ShardHash, codec};
use rbee_tests::{Member, XorShift, import_model, pool_key, workspace_root};

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn mutate(rng: &mut XorShift, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    match rng.below(4) {
        0 => v.truncate(rng.below(v.len())),
        1 => {
            let i = rng.below(v.len());
            v[i] = [0x00, 0xff, 0xfb, 0xfc, 0xfd, 0x80][rng.below(6)];
        }
        2 => {
            let i = 4 + rng.below(v.len() - 4);
            v.splice(i..i, [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00]);
            let len = u32::try_from(v.len() - 4).unwrap();
            v[..4].copy_from_slice(&len.to_le_bytes());
        }
        _ => {
            for _ in 0..4 {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
        }
    }
    v
}

fn request(model: &str, max_tokens: usize) -> InferRequest {
    InferRequest {
        model: model.into(),
        prompt: Prompt::Chat(vec![ChatMessage::new("user", "hi")]),
        params: SamplingParams {
            max_tokens,
            seed: Some(1),
            ..SamplingParams::default()
        },
    }
}

/// Sends `bytes` on a fresh stream, closes our side, and reads until the node closes its
/// side. Returns what came back.
async fn exchange(
    client: &rbee_net::Client,
    peer: rbee_net::PeerId,
    protocol: &'static str,
    bytes: &[u8],
) -> Vec<u8> {
    let mut s = client.open_stream(peer, protocol).await.unwrap();
    // The node may refuse and close before reading everything we send.
    let _ = s.write_all(bytes).await;
    let _ = s.close().await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "{protocol}: the stream was still open 30 s after {} bytes {:02x?}",
        bytes.len(),
        &bytes[..bytes.len().min(32)]
    );
    out
}

/// The frames in `bytes` (whole ones; a cut-off tail is not a frame).
fn frames<T: serde::de::DeserializeOwned>(mut bytes: &[u8]) -> Vec<T> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let Some(body) = bytes.get(4..4 + len) else {
            break;
        };
        out.push(codec::decode(body).unwrap());
        bytes = &bytes[4 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_gets_errors_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let model = workspace_root().join("crates/rbee-infer/tests/reference/tiny-qwen3.gguf");
    let data = tmp.path().join("a");
    import_model(&data, &model, "tiny");
    let member = Member::start(
        tmp.path(),
        "a",
        &key,
        None,
        "",
        &["--context-length", "128"],
    );
    let node_peer = rbee_net::load_or_create_identity(&data.join("node.key"))
        .unwrap()
        .public()
        .to_peer_id();

    let mut config = rbee_net::NetConfig::new(
        libp2p::identity::Keypair::generate_ed25519(),
        key.parse().unwrap(),
    );
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.mdns = false;
    config.bootstrap = vec![format!("{}/p2p/{node_peer}", member.p2p).parse().unwrap()];
    let (client, mut events) = rbee_net::spawn(config).unwrap();
    // Joined once the node's status arrived over the connection.
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = events.recv().await {
            if matches!(e, rbee_net::Event::PeerJoined { peer, .. } if peer == node_peer) {
                return;
            }
        }
    })
    .await
    .expect("the node never showed up in the pool");

    // A valid request first: the baseline the garbage is cut from.
    let valid = framed(&codec::encode(&request("tiny", 4)).unwrap());
    let reply: Vec<InferFrame> =
        frames(&exchange(&client, node_peer, INFER_PROTOCOL, &valid).await);
    assert!(
        matches!(reply.last(), Some(InferFrame::Done(_))),
        "{reply:?}"
    );

    let mut rng = XorShift(0x00f0_22ed_2026);
    let shard = framed(
        &codec::encode(&ShardRequest::Shard {
            hash: ShardHash::of(b"x"),
            range: Some((0, 10)),
        })
        .unwrap(),
    );
    let manifest =
        framed(&codec::encode(&ShardRequest::Manifest(ContentId::from_bytes([7; 32]))).unwrap());
    let preset =
        framed(&codec::encode(&ShardRequest::Preset(ContentId::from_bytes([9; 32]))).unwrap());
    let missing = framed(&codec::encode(&request("ghost", 4)).unwrap());
    let mut cases: Vec<(&'static str, Vec<u8>)> = vec![
        (INFER_PROTOCOL, Vec::new()),
        (INFER_PROTOCOL, vec![0xff; 3]),
        (INFER_PROTOCOL, (4u32 << 20).to_le_bytes().to_vec()),
        (INFER_PROTOCOL, u32::MAX.to_le_bytes().to_vec()),
        (INFER_PROTOCOL, missing),
        (SHARD_PROTOCOL, Vec::new()),
        (SHARD_PROTOCOL, 4097u32.to_le_bytes().to_vec()),
        (SHARD_PROTOCOL, shard.clone()),
        (SHARD_PROTOCOL, manifest.clone()),
        (SHARD_PROTOCOL, preset.clone()),
    ];
    for _ in 0..60 {
        cases.push((INFER_PROTOCOL, mutate(&mut rng, &valid)));
        cases.push((SHARD_PROTOCOL, mutate(&mut rng, &shard)));
        cases.push((SHARD_PROTOCOL, mutate(&mut rng, &manifest)));
        cases.push((SHARD_PROTOCOL, mutate(&mut rng, &preset)));
    }
    for (protocol, bytes) in &cases {
        let out = exchange(&client, node_peer, protocol, bytes).await;
        // Whatever comes back is well-formed frames; an infer error carries a 4xx/5xx.
        if *protocol == INFER_PROTOCOL {
            for f in frames::<InferFrame>(&out) {
                if let InferFrame::Error { code, message } = f {
                    let e = rbee_node::NodeError::from_wire(code, message, "a");
                    assert!((400..600).contains(&e.status()), "{e}");
                }
            }
        } else {
            for f in frames::<ShardReply>(&out) {
                assert!(
                    matches!(f, ShardReply::Error { .. }),
                    "a shard or preset the node does not have: {f:?}"
                );
            }
        }
    }

    // The node still serves a peer and its API.
    let reply: Vec<InferFrame> =
        frames(&exchange(&client, node_peer, INFER_PROTOCOL, &valid).await);
    assert!(
        matches!(reply.last(), Some(InferFrame::Done(_))),
        "{reply:?}"
    );
    let health = rbee_tests::http()
        .get(&member.node.url("/health"))
        .call()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let log = member.node.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
