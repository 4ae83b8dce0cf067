//! Fuzz suite for everything a node reads from a peer or from its own disk's protocol files:
//! the frames of `/rbee/infer/2`, `/rbee/embed/1` and `/rbee/shard/1` (each in both directions),
//! gossiped node statuses, manifests and model references. Each goes through the exact
//! production entry point with the production cap (`read_frame` with `MAX_REQUEST_FRAME`,
//! `NodeStatus::from_wire`, `manifest_reply`, …) and what the node does next with a decoded
//! value (`InferRequest::check`, `from_wire`'s status mapping).
//!
//! Inputs: a corpus of valid messages, every truncation and single-byte change of them,
//! seeded random mutations (flips, splices, inserted length bytes), lying frame headers, and
//! proptest-generated random bytes and random valid messages. The rule for all: an `Ok` or
//! an `Err`, never a panic, never a hang (every read is over an in-memory buffer that ends),
//! and no allocation beyond the frame cap plus a small multiple of the input.
//!
//! Runs in seconds (a fixed number of cases, fixed seeds), so it runs in CI with the rest.

#![allow(clippy::unwrap_used)]
// The only way to observe allocation sizes is a counting global allocator, which needs
// `unsafe impl GlobalAlloc`; it forwards every call to `System` unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use proptest::prelude::*;
use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{FinishReason, GenerationStats, Prompt};
use rbee_infer::sampling::SamplingParams;
use rbee_proto::embed::{self, EmbedFrame, EmbedRequest};
use rbee_proto::infer::{self, InferFrame, InferRequest};
use rbee_proto::pool::{DeviceStatus, DiskModel, LoadedModel, NodeStatus};
use rbee_proto::shard::{self, ShardReply, ShardRequest};
use rbee_proto::{
    ContentId, FileEntry, Manifest, ModelFormat, ModelMetadata, ModelRef, ModelSource, ShardHash,
    codec,
};

struct Tracking;

thread_local! {
    /// The largest single allocation on this thread since the last `measure`. Per thread,
    /// because the test harness runs tests on several threads at once.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown find no slot, and are not measured.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the bookkeeping touches only a const-initialised thread-local
// `Cell` (no allocation, no re-entry).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's `layout` is passed through as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` was allocated by `System` (every allocation goes through here) with
        // `layout`, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f`, failing the test on a panic or on an allocation over `limit` bytes.
fn guarded(what: &str, input: &[u8], limit: usize, f: impl FnOnce()) {
    LARGEST.with(|l| l.set(0));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    let largest = LARGEST.with(Cell::get);
    assert!(
        outcome.is_ok(),
        "{what}: panicked on {} input bytes {:02x?}",
        input.len(),
        &input[..input.len().min(64)]
    );
    assert!(
        largest <= limit,
        "{what}: a {largest}-byte allocation for {} input bytes (limit {limit}): {:02x?}",
        input.len(),
        &input[..input.len().min(64)]
    );
}

/// What a node may allocate for `input` bytes from a peer: a bounded multiple of what
/// arrived (the codec's size classes), and serde's size-hint preallocation, capped at 1 MiB.
/// Not the frame cap: a header that lies about the length costs what was actually sent.
fn decode_limit(input: usize) -> usize {
    (1 << 20) + 64 * input
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn read_frame<T: serde::de::DeserializeOwned>(bytes: &[u8], cap: usize) -> Option<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut cursor = futures::io::Cursor::new(bytes);
    rt.block_on(rbee_net::frame::read_frame::<_, T>(&mut cursor, cap))
        .ok()
        .flatten()
}

/// One target: how its bytes arrive and what the node does with a decoded value.
struct Target {
    name: &'static str,
    /// The cap its production reader uses.
    cap: usize,
    /// Framed targets are read by `read_frame` (bytes include the 4-byte header);
    /// the others get the raw bytes.
    framed: bool,
    run: fn(&[u8]),
}

fn serving_node_reads_a_request(bytes: &[u8]) {
    if let Some(req) = read_frame::<InferRequest>(bytes, infer::MAX_REQUEST_FRAME) {
        // What `serve_one` does before anything else: refuse or accept, never panic.
        let _ = req.check();
    }
}

fn calling_node_reads_a_reply(bytes: &[u8]) {
    if let Some(InferFrame::Error { code, message }) =
        read_frame::<InferFrame>(bytes, infer::MAX_RESPONSE_FRAME)
    {
        let e = rbee_node::NodeError::from_wire(code, message, "peer");
        let code = e.status();
        assert!((400..600).contains(&code), "a peer's error became {code}");
    }
}

fn embedding_node_reads_a_request(bytes: &[u8]) {
    if let Some(req) = read_frame::<EmbedRequest>(bytes, embed::MAX_REQUEST_FRAME) {
        let _ = req.check();
    }
}

fn calling_node_reads_vectors(bytes: &[u8]) {
    match read_frame::<EmbedFrame>(bytes, embed::MAX_RESPONSE_FRAME) {
        Some(EmbedFrame::Vectors(vectors)) => {
            let _ = embed::check_vectors(&vectors, vectors.len(), None);
        }
        Some(EmbedFrame::Error { code, message }) => {
            let code = rbee_node::NodeError::from_wire(code, message, "peer").status();
            assert!((400..600).contains(&code), "a peer's error became {code}");
        }
        _ => {}
    }
}

fn sharing_node_reads_a_request(bytes: &[u8]) {
    let _ = read_frame::<ShardRequest>(bytes, shard::REQUEST_CAP);
}

fn pulling_node_reads_a_reply(bytes: &[u8]) {
    let reply = read_frame::<ShardReply>(bytes, shard::REPLY_CAP);
    let _ = shard::manifest_reply(reply, &sample_manifest().content_id());
    // The same bytes as the answer to a preset request, under its own cap.
    let reply = read_frame::<ShardReply>(bytes, shard::PRESET_REPLY_CAP);
    if let Ok(bytes) = shard::preset_reply(reply, &sample_preset_id()) {
        let _ = rbee_node::preset::Preset::from_peer(&bytes);
    }
}

/// A preset definition as a peer sends it, and its id.
fn sample_preset() -> Vec<u8> {
    format!(
        r#"{{"base":"{}","base_name":"gemma","from":"gemma","system":"Be brief.","parameters":{{"temperature":0.5,"stop":["END"]}}}}"#,
        sample_manifest().content_id()
    )
    .into_bytes()
}

fn sample_preset_id() -> rbee_proto::ContentId {
    rbee_proto::ContentId::of(&sample_preset())
}

fn gossiped_status(bytes: &[u8]) {
    let _ = NodeStatus::from_wire(bytes);
}

fn stored_manifest(bytes: &[u8]) {
    if let Ok(m) = Manifest::decode(bytes) {
        let _ = m.validate();
        let _ = m.content_id();
    }
}

fn model_reference(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(r) = text.parse::<ModelRef>() {
        // What parses prints back as something that parses to the same reference.
        let again: ModelRef = r.to_string().parse().unwrap();
        assert_eq!(again, r);
    }
    let _ = rbee_store::ImportSource::parse(&text);
}

const TARGETS: &[Target] = &[
    Target {
        name: "infer request (/rbee/infer/2, serving side)",
        cap: infer::MAX_REQUEST_FRAME,
        framed: true,
        run: serving_node_reads_a_request,
    },
    Target {
        name: "infer frame (/rbee/infer/2, calling side)",
        cap: infer::MAX_RESPONSE_FRAME,
        framed: true,
        run: calling_node_reads_a_reply,
    },
    Target {
        name: "embed request (/rbee/embed/1, serving side)",
        cap: embed::MAX_REQUEST_FRAME,
        framed: true,
        run: embedding_node_reads_a_request,
    },
    Target {
        name: "embed frame (/rbee/embed/1, calling side)",
        cap: embed::MAX_RESPONSE_FRAME,
        framed: true,
        run: calling_node_reads_vectors,
    },
    Target {
        name: "shard request (/rbee/shard/1, sharing side)",
        cap: shard::REQUEST_CAP,
        framed: true,
        run: sharing_node_reads_a_request,
    },
    Target {
        name: "shard reply (/rbee/shard/1, pulling side)",
        cap: shard::REPLY_CAP,
        framed: true,
        run: pulling_node_reads_a_reply,
    },
    Target {
        name: "node status (gossip)",
        cap: rbee_proto::pool::MAX_STATUS_SIZE,
        framed: false,
        run: gossiped_status,
    },
    Target {
        name: "manifest",
        cap: codec::MAX_MESSAGE_SIZE,
        framed: false,
        run: stored_manifest,
    },
    Target {
        name: "model reference",
        cap: 0,
        framed: false,
        run: model_reference,
    },
];

fn sample_manifest() -> Manifest {
    Manifest {
        files: vec![FileEntry {
            name: "model.gguf".into(),
            size: 3 * (1 << 20) + 5,
            shard_size: 1 << 20,
            shards: (0u32..4).map(|i| ShardHash::of(&i.to_le_bytes())).collect(),
        }],
        metadata: ModelMetadata {
            format: ModelFormat::Gguf,
            architecture: "qwen3".into(),
            quantization: "Q4_K_M".into(),
            parameter_count: 600_000_000,
            context_length: 40960,
        },
        source: ModelSource::HuggingFace {
            repo: "Qwen/Qwen3-0.6B-GGUF".into(),
            revision: "a".repeat(40),
            file: Some("Qwen3-0.6B-Q4_K_M.gguf".into()),
        },
    }
}

fn sample_status() -> NodeStatus {
    let id = sample_manifest().content_id();
    NodeStatus {
        name: "attic".into(),
        api_addr: Some("192.168.1.7:7835".into()),
        seq: 41,
        devices: vec![DeviceStatus {
            name: "cpu".into(),
            budget_bytes: 8 << 30,
            used_bytes: 1 << 30,
        }],
        loaded: vec![LoadedModel {
            content_id: id,
            device: "cpu".into(),
            queue: 1,
            queue_capacity: 16,
            busy: true,
            live: 3,
            max_live: 8,
        }],
        on_disk: vec![DiskModel {
            content_id: id,
            names: vec!["qwen3".into(), "q".into()],
            source: Some("Qwen/Qwen3-0.6B-GGUF:Qwen3-0.6B-Q4_K_M.gguf".into()),
            size: 400 << 20,
            shared: true,
        }],
        tokens_per_sec: 23.5,
        presets: vec![rbee_proto::pool::PresetStatus {
            name: "pirate:v2".into(),
            id: sample_preset_id(),
            base: sample_manifest().content_id(),
        }],
    }
}

fn sample_params() -> SamplingParams {
    SamplingParams {
        temperature: 0.7,
        top_k: Some(40),
        top_p: Some(0.9),
        min_p: Some(0.05),
        seed: Some(7),
        max_tokens: 64,
        stop: vec!["\n\n".into()],
        ..SamplingParams::default()
    }
}

/// Valid bytes of each target, in `TARGETS` order.
fn corpus() -> Vec<Vec<Vec<u8>>> {
    let enc = |v: &dyn erased::Encode| v.bytes();
    let chat = InferRequest {
        model: "qwen3".into(),
        prompt: Prompt::Chat(vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Lights off in the kitchen?"),
        ]),
        params: sample_params(),
    };
    let text = InferRequest {
        model: "hf:Qwen/Qwen3-0.6B-GGUF".into(),
        prompt: Prompt::Text("Once upon a time".into()),
        params: SamplingParams::default(),
    };
    let tokens = InferRequest {
        model: "cid:0123456789abcdef".into(),
        prompt: Prompt::Tokens(vec![1, 2, 3, 50_000]),
        params: sample_params(),
    };
    let frames = [
        InferFrame::Started {
            node: "attic".into(),
            model: "qwen3".into(),
            prompt_tokens: 12,
        },
        InferFrame::Text("Hello".into()),
        InferFrame::Done(GenerationStats {
            prompt_tokens: 12,
            completion_tokens: 30,
            finish_reason: FinishReason::Length,
            prefill_secs: 0.1,
            decode_secs: 1.5,
            cached_tokens: 4,
            mask_secs: 0.0,
        }),
        InferFrame::Error {
            code: rbee_proto::pool::ErrorCode::Busy {
                retry_after_secs: 1,
            },
            message: "busy".into(),
        },
        InferFrame::Phase("loading".into()),
        InferFrame::Progress {
            done: 5,
            total: 10,
            peers: vec!["attic".into()],
        },
    ];
    let embed_requests = [
        EmbedRequest {
            model: "minilm".into(),
            inputs: vec![
                Prompt::Text("kitchen lights".into()),
                Prompt::Tokens(vec![101, 102]),
            ],
            truncate: true,
            dimensions: None,
        },
        EmbedRequest {
            model: "hf:nomic-ai/nomic-embed-text-v1.5-GGUF".into(),
            inputs: vec![Prompt::Text("search_query: bees".into())],
            truncate: false,
            dimensions: Some(256),
        },
    ];
    let embed_frames = [
        EmbedFrame::Phase("loading".into()),
        EmbedFrame::Progress {
            done: 1,
            total: 2,
            peers: vec!["attic".into()],
        },
        EmbedFrame::Vectors(vec![vec![0.25, -0.5, 1.0e-3], vec![0.0, 1.0, -1.0]]),
        EmbedFrame::Done {
            node: "attic".into(),
            model: "minilm".into(),
            prompt_tokens: 9,
        },
        EmbedFrame::Error {
            code: rbee_proto::pool::ErrorCode::ContextLengthExceeded,
            message: "input 0 is too long".into(),
        },
    ];
    let m = sample_manifest();
    let shard_requests = [
        ShardRequest::Manifest(m.content_id()),
        ShardRequest::Shard {
            hash: m.files[0].shards[1],
            range: Some((4096, 65536)),
        },
        ShardRequest::Shard {
            hash: m.files[0].shards[0],
            range: None,
        },
        ShardRequest::Preset(sample_preset_id()),
    ];
    let shard_replies = [
        ShardReply::Manifest(m.clone()),
        ShardReply::Data { len: 1 << 20 },
        ShardReply::Error {
            code: rbee_proto::pool::ErrorCode::NotFound,
            message: "no such shard".into(),
        },
        ShardReply::Preset(sample_preset()),
    ];
    let framed_all = |items: Vec<Vec<u8>>| items.iter().map(|b| framed(b)).collect::<Vec<_>>();
    vec![
        framed_all(vec![enc(&chat), enc(&text), enc(&tokens)]),
        framed_all(frames.iter().map(|f| enc(f)).collect()),
        framed_all(embed_requests.iter().map(|r| enc(r)).collect()),
        framed_all(embed_frames.iter().map(|f| enc(f)).collect()),
        framed_all(shard_requests.iter().map(|r| enc(r)).collect()),
        framed_all(shard_replies.iter().map(|r| enc(r)).collect()),
        vec![enc(&sample_status())],
        vec![enc(&m)],
        [
            "qwen3",
            "hf:Qwen/Qwen3-0.6B-GGUF@main:Qwen3-0.6B-Q4_K_M.gguf",
            "Qwen/Qwen3-0.6B-GGUF:Q4_K_M",
            "cid:0123456789abcdef",
            "ollama:llama3.2:3b",
            "hf-cache:org/repo",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
    ]
}

/// Encoding through the one codec, for values of different types in one list.
mod erased {
    pub trait Encode {
        fn bytes(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn bytes(&self) -> Vec<u8> {
            rbee_proto::codec::encode(self).unwrap()
        }
    }
}

fn check(t: &Target, input: &[u8]) {
    let limit = decode_limit(input.len());
    guarded(t.name, input, limit, || (t.run)(input));
}

/// A small deterministic generator (xorshift), so every CI run sees the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that steer a varint decoder: bincode's 2-, 4-, 8- and 16-byte length markers, and
/// the extremes.
const INTERESTING: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff];

fn mutate(rng: &mut Rng, base: &[u8], donors: &[Vec<u8>]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                // A huge varint where a length or count goes.
                let i = rng.below(v.len() + 1);
                let mut huge = vec![0xfd];
                huge.extend_from_slice(&(rng.next() | 1 << 40).to_le_bytes());
                v.splice(i..i, huge);
            }
            3 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = (a + rng.below(16)).min(v.len());
                v.drain(a..b);
            }
            4 if !donors.is_empty() => {
                let d = &donors[rng.below(donors.len())];
                if !d.is_empty() {
                    let a = rng.below(d.len());
                    let b = (a + rng.below(64)).min(d.len());
                    let i = rng.below(v.len() + 1);
                    v.splice(i..i, d[a..b].iter().copied());
                }
            }
            _ => {
                let i = rng.below(v.len() + 1);
                v.truncate(i);
            }
        }
    }
    v
}

#[test]
fn the_corpus_is_accepted_as_valid() {
    // The mutations start from messages the node does accept, so they reach deep paths.
    let corpus = corpus();
    let chat = &corpus[0][0];
    let req = read_frame::<InferRequest>(chat, infer::MAX_REQUEST_FRAME).unwrap();
    req.check().unwrap();
    for embed in &corpus[2] {
        let req = read_frame::<EmbedRequest>(embed, embed::MAX_REQUEST_FRAME).unwrap();
        req.check().unwrap();
    }
    let reply = read_frame::<ShardReply>(&corpus[5][0], shard::REPLY_CAP);
    shard::manifest_reply(reply, &sample_manifest().content_id()).unwrap();
    let reply = read_frame::<ShardReply>(&corpus[5][3], shard::PRESET_REPLY_CAP);
    let preset = shard::preset_reply(reply, &sample_preset_id()).unwrap();
    rbee_node::preset::Preset::from_peer(&preset).unwrap();
    NodeStatus::from_wire(&corpus[6][0]).unwrap();
    Manifest::decode(&corpus[7][0]).unwrap().validate().unwrap();
}

#[test]
fn every_truncation_and_byte_change_of_the_corpus_is_handled() {
    for (t, items) in TARGETS.iter().zip(corpus()) {
        for base in &items {
            for cut in 0..base.len() {
                check(t, &base[..cut]);
            }
            // Every byte to every interesting value: length markers land on every field.
            for i in 0..base.len().min(1024) {
                for &b in INTERESTING {
                    let mut v = base.clone();
                    v[i] = b;
                    check(t, &v);
                }
            }
        }
    }
}

#[test]
fn seeded_random_mutations_are_handled() {
    let corpus = corpus();
    let all: Vec<Vec<u8>> = corpus.iter().flatten().cloned().collect();
    let mut rng = Rng(0x5eed_2026_0f0f);
    for (t, items) in TARGETS.iter().zip(&corpus) {
        for _ in 0..10_000 {
            let base = &items[rng.below(items.len())];
            let mut v = mutate(&mut rng, base, &all);
            if t.framed && v.len() >= 4 && rng.below(2) == 0 {
                // Keep the header honest about the mutated body half of the time, so the
                // decoder (not only the length check) sees the damage.
                let len = u32::try_from(v.len() - 4).unwrap();
                v[..4].copy_from_slice(&len.to_le_bytes());
            }
            check(t, &v);
        }
    }
}

#[test]
fn lying_frame_headers_are_refused_within_the_cap() {
    for (t, items) in TARGETS.iter().zip(corpus()) {
        if !t.framed {
            continue;
        }
        let body = &items[0][4..];
        let cap = u32::try_from(t.cap).unwrap();
        for declared in [0, 1, 3, cap - 1, cap, cap + 1, u32::MAX / 2, u32::MAX] {
            let mut v = declared.to_le_bytes().to_vec();
            v.extend_from_slice(body);
            check(t, &v);
        }
        // A header and nothing else; half a header; nothing at all.
        check(t, &cap.to_le_bytes());
        check(t, &[0x10, 0x00]);
        check(t, &[]);
    }
}

#[test]
fn a_peer_cannot_make_a_request_bypass_the_http_rules() {
    // Values the HTTP API refuses are refused from a peer as well, before any work.
    let bad = [
        SamplingParams {
            max_tokens: 0,
            ..sample_params()
        },
        SamplingParams {
            temperature: f32::NAN,
            ..sample_params()
        },
        SamplingParams {
            repeat_penalty: 1e30,
            ..sample_params()
        },
        SamplingParams {
            max_tokens: usize::MAX,
            ..sample_params()
        },
    ];
    for params in bad {
        let req = InferRequest {
            model: "qwen3".into(),
            prompt: Prompt::Text("hi".into()),
            params,
        };
        let bytes = framed(&codec::encode(&req).unwrap());
        let back = read_frame::<InferRequest>(&bytes, infer::MAX_REQUEST_FRAME).unwrap();
        assert!(back.check().is_err(), "{:?} accepted", back.params);
    }
    let no_messages = InferRequest {
        model: "qwen3".into(),
        prompt: Prompt::Chat(vec![ChatMessage::new("wizard", "hi")]),
        params: sample_params(),
    };
    assert!(no_messages.check().is_err());
    let bad_model = InferRequest {
        model: "../../etc/passwd".repeat(1000),
        prompt: Prompt::Text("hi".into()),
        params: sample_params(),
    };
    let e = bad_model.check().unwrap_err().to_string();
    assert!(e.len() < 1024, "the error echoes the whole name: {e}");
}

fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("(?s).{0,40}").unwrap()
}

fn params() -> impl Strategy<Value = SamplingParams> {
    (
        any::<f32>(),
        proptest::option::of(0usize..100_000),
        any::<Option<f32>>(),
        any::<f32>(),
        any::<usize>(),
        proptest::collection::vec(text(), 0..4),
    )
        .prop_map(
            |(temperature, top_k, top_p, repeat_penalty, max_tokens, stop)| SamplingParams {
                temperature,
                top_k,
                top_p,
                repeat_penalty,
                max_tokens,
                stop,
                ..SamplingParams::default()
            },
        )
}

fn prompt() -> impl Strategy<Value = Prompt> {
    prop_oneof![
        text().prop_map(Prompt::Text),
        proptest::collection::vec((text(), text()), 0..6).prop_map(|m| Prompt::Chat(
            m.into_iter().map(|(r, c)| ChatMessage::new(r, c)).collect()
        )),
        proptest::collection::vec(any::<u32>(), 0..16).prop_map(Prompt::Tokens),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_handled_by_every_target(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        for t in TARGETS {
            check(t, &bytes);
        }
    }

    #[test]
    fn any_request_survives_the_wire_and_is_judged_the_same(
        model in text(), prompt in prompt(), params in params()
    ) {
        let req = InferRequest { model, prompt, params };
        let bytes = framed(&codec::encode(&req).unwrap());
        let back = read_frame::<InferRequest>(&bytes, infer::MAX_REQUEST_FRAME).unwrap();
        prop_assert_eq!(format!("{back:?}"), format!("{req:?}"));
        // Accepting or refusing depends on the request, not on having crossed the wire.
        prop_assert_eq!(
            back.check().map_err(|e| e.to_string()),
            req.check().map_err(|e| e.to_string())
        );
    }

    #[test]
    fn any_shard_request_round_trips(hash in any::<[u8; 32]>(), range in any::<Option<(u64, u64)>>()) {
        let req = ShardRequest::Shard { hash: ShardHash::from_bytes(hash), range };
        let bytes = framed(&codec::encode(&req).unwrap());
        let back = read_frame::<ShardRequest>(&bytes, shard::REQUEST_CAP).unwrap();
        prop_assert_eq!(format!("{back:?}"), format!("{req:?}"));
        let _ = ContentId::from_bytes(hash);
    }
}

#[test]
#[should_panic(expected = "allocation")]
fn the_guard_catches_a_large_allocation() {
    // The harness itself can fail: a decoder that allocated like this would be caught.
    guarded("self-check", &[], 1 << 20, || {
        std::hint::black_box(vec![0u8; 8 << 20]);
    });
}
