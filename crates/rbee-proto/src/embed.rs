//! `/rbee/embed/1`: a node asks a peer to embed inputs with a model. One request frame from the
//! caller; then, from the server, `Phase` and `Progress` frames while it pulls or loads the
//! model, the vectors in order (as many per `Vectors` frame as fit its cap), and `Done`, or an
//! `Error` at any point (docs/PROTOCOL.md).
//!
//! A protocol of its own rather than a new request kind on `/rbee/infer/2`: its answer is a
//! block of vectors, not a stream of text, and a peer of an older release refuses the name
//! during negotiation ("does not speak /rbee/embed/1") instead of misreading a frame.

use serde::{Deserialize, Serialize};

use crate::generation::Prompt;
use crate::pool::ErrorCode;

/// Largest request frame: the HTTP API's body limit.
pub const MAX_REQUEST_FRAME: usize = 4 << 20;
/// Largest response frame; a `Vectors` frame holds as many whole vectors as fit.
pub const MAX_RESPONSE_FRAME: usize = 1 << 20;
/// Inputs one request may carry (OpenAI's own limit for `/v1/embeddings`).
pub const MAX_INPUTS: usize = 2048;
/// Values one vector may have (the widest embedding models have 4096; room to spare).
pub const MAX_DIMENSIONS: usize = 16_384;

/// What to embed, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedRequest {
    pub model: String,
    /// Text or token ids, one vector each, in order.
    pub inputs: Vec<Prompt>,
    /// Cut an input longer than the model takes instead of refusing the request.
    pub truncate: bool,
    /// Keep the first this many values (renormalised): for models trained with Matryoshka
    /// loss; `None` keeps them all.
    pub dimensions: Option<u32>,
}

impl EmbedRequest {
    /// What a serving node refuses before it pulls, loads or queues anything for a peer: the
    /// rules the HTTP API applies to a client.
    pub fn check(&self) -> Result<(), String> {
        self.model
            .parse::<crate::ModelRef>()
            .map_err(|e| e.to_string())?;
        if self.inputs.is_empty() || self.inputs.len() > MAX_INPUTS {
            return Err(format!(
                "{} inputs; send 1 to {MAX_INPUTS}",
                self.inputs.len()
            ));
        }
        if let Some(i) = self
            .inputs
            .iter()
            .position(|p| matches!(p, Prompt::Chat(_)))
        {
            return Err(format!("input {i} is a chat; embed text or token ids"));
        }
        if let Some(d) = self.dimensions
            && (d == 0 || d as usize > MAX_DIMENSIONS)
        {
            return Err(format!("dimensions {d}: send 1 to {MAX_DIMENSIONS}"));
        }
        Ok(())
    }
}

/// The frames a server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmbedFrame {
    /// Before the vectors: what the serving node is doing first (pulling, loading).
    Phase(String),
    /// Before the vectors: the progress of a pull on the serving node.
    Progress {
        done: u64,
        total: u64,
        peers: Vec<String>,
    },
    /// The next vectors, in input order.
    Vectors(Vec<Vec<f32>>),
    /// Every vector was sent.
    Done {
        node: String,
        model: String,
        prompt_tokens: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl EmbedFrame {
    /// `Done` or `Error`: nothing follows.
    pub fn is_last(&self) -> bool {
        matches!(self, EmbedFrame::Done { .. } | EmbedFrame::Error { .. })
    }
}

/// Vectors per `Vectors` frame so that each frame stays under [`MAX_RESPONSE_FRAME`] (4 bytes a
/// value, plus each vector's length prefix and the frame's own bytes).
pub fn vectors_per_frame(dimensions: usize) -> usize {
    ((MAX_RESPONSE_FRAME - 64) / (4 * dimensions.max(1) + 10)).max(1)
}

/// Checks what a caller received against what it asked for: one vector per input, all of one
/// length within [`MAX_DIMENSIONS`] (and the asked `dimensions`), finite values.
pub fn check_vectors(
    vectors: &[Vec<f32>],
    inputs: usize,
    dimensions: Option<u32>,
) -> Result<(), String> {
    if vectors.len() != inputs {
        return Err(format!("{} vectors for {inputs} inputs", vectors.len()));
    }
    let len = vectors.first().map_or(0, Vec::len);
    if len == 0 || len > MAX_DIMENSIONS {
        return Err(format!("vectors of {len} values"));
    }
    if let Some(d) = dimensions
        && d as usize != len
    {
        return Err(format!("vectors of {len} values where {d} were asked for"));
    }
    if vectors.iter().any(|v| v.len() != len) {
        return Err("vectors of different lengths".into());
    }
    if vectors.iter().flatten().any(|x| !x.is_finite()) {
        return Err("non-finite values".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_frames_survive_the_codec_and_fit_their_caps() {
        let req = EmbedRequest {
            model: "minilm".into(),
            inputs: vec![
                Prompt::Text("hé 🐝".into()),
                Prompt::Tokens(vec![101, 7, 102]),
            ],
            truncate: true,
            dimensions: Some(128),
        };
        let back: EmbedRequest =
            crate::codec::decode(&crate::codec::encode(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        assert!(req.check().is_ok());
        for dims in [1, 384, 1024, 4096, MAX_DIMENSIONS] {
            let n = vectors_per_frame(dims);
            let frame = EmbedFrame::Vectors(vec![vec![1.0e-30f32; dims]; n]);
            let bytes = crate::codec::encode(&frame).unwrap();
            assert!(bytes.len() <= MAX_RESPONSE_FRAME, "{dims}: {}", bytes.len());
        }
    }

    #[test]
    fn bad_requests_and_answers_are_named() {
        let req = |inputs: Vec<Prompt>, dimensions| EmbedRequest {
            model: "m".into(),
            inputs,
            truncate: false,
            dimensions,
        };
        assert!(req(vec![], None).check().unwrap_err().contains("0 inputs"));
        let chat = Prompt::Chat(vec![crate::generation::ChatMessage::new("user", "x")]);
        assert!(req(vec![chat], None).check().unwrap_err().contains("chat"));
        let text = || vec![Prompt::Text("a".into())];
        assert!(req(text(), Some(0)).check().is_err());
        assert!(
            req(vec![Prompt::Text("a".into()); MAX_INPUTS + 1], None)
                .check()
                .is_err()
        );
        assert!(check_vectors(&[vec![1.0; 4]], 2, None).is_err());
        assert!(check_vectors(&[vec![1.0; 4], vec![1.0; 3]], 2, None).is_err());
        assert!(check_vectors(&[vec![f32::NAN; 4]], 1, None).is_err());
        assert!(check_vectors(&[vec![1.0; 4]], 1, Some(8)).is_err());
        assert!(check_vectors(&[vec![1.0; 4]], 1, Some(4)).is_ok());
    }
}
