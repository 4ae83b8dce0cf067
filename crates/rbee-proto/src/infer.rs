//! `/rbee/infer/2`: a node asks a peer to run a generation. One request frame from the
//! caller, then frames from the server until `Done` or `Error` (docs/PROTOCOL.md).

use serde::{Deserialize, Serialize};

use crate::generation::{GenerationEvent, Prompt, SamplingParams, check_messages};

/// Largest request frame (a long conversation; the HTTP body limit is the same).
pub const MAX_REQUEST_FRAME: usize = 4 << 20;
/// Largest response frame (one piece of text, or the final stats).
pub const MAX_RESPONSE_FRAME: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct InferRequest {
    pub model: String,
    pub prompt: Prompt,
    pub params: SamplingParams,
}

impl InferRequest {
    /// What a serving node refuses before it pulls, loads or queues anything for a peer:
    /// the same rules as the HTTP API's (a peer is not trusted more than a client).
    pub fn check(&self) -> Result<(), String> {
        // (The parse error shows at most the start of a long name.)
        self.model
            .parse::<crate::ModelRef>()
            .map_err(|e| e.to_string())?;
        self.params.validate()?;
        if let Prompt::Chat(messages) = &self.prompt {
            check_messages(messages).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The frames a server sends: the generation's own events (one type from the engine to
/// the client, [`GenerationEvent`]).
pub type InferFrame = GenerationEvent;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_the_codec() {
        let req = InferRequest {
            model: "gemma".into(),
            prompt: Prompt::Chat(vec![crate::generation::ChatMessage::new("user", "hé 🐝")]),
            params: SamplingParams {
                seed: Some(7),
                stop: vec!["\n".into()],
                ..Default::default()
            },
        };
        let bytes = crate::codec::encode(&req).unwrap();
        let back: InferRequest = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back.prompt, req.prompt);
        assert_eq!(back.params, req.params);
    }
}
