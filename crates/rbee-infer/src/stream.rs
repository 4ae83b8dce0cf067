//! Turning token bytes into text that is safe to show at every step.
//!
//! Tokens carry bytes, not characters: one emoji can span several byte-fallback tokens. The
//! streamer holds back an incomplete UTF-8 sequence until it completes, and holds back any
//! text that could still turn into a stop sequence, so a client never sees half a character
//! or the beginning of a stop string.

/// Incremental text assembly with stop-sequence detection.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes not yet valid UTF-8 (an incomplete trailing sequence).
    pending: Vec<u8>,
    /// Decoded text not yet released (it might be the start of a stop sequence).
    held: String,
    stops: Vec<String>,
    stopped: bool,
}

/// What one step produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamStep {
    /// Text safe to show now (may be empty).
    pub text: String,
    /// A stop sequence was found; generation should end.
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        TextStream {
            stops,
            ..Default::default()
        }
    }

    /// Adds one token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> StreamStep {
        if self.stopped {
            return StreamStep {
                text: String::new(),
                stopped: true,
            };
        }
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // An invalid sequence that can never complete: emit it as U+FFFD, like a lossy decode.
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(valid);
        let complete = std::mem::replace(&mut self.pending, rest);
        self.held.push_str(&String::from_utf8_lossy(&complete));
        self.release()
    }

    /// Ends the stream: whatever is held (minus an incomplete character) is released.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        if !self.pending.is_empty() {
            let bytes = std::mem::take(&mut self.pending);
            self.held.push_str(&String::from_utf8_lossy(&bytes));
        }
        std::mem::take(&mut self.held)
    }

    fn release(&mut self) -> StreamStep {
        // A complete stop sequence: cut there.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.held.truncate(at);
            self.stopped = true;
            return StreamStep {
                text: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        // Keep back the longest suffix that is a prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let tail = self.held.split_off(cut);
        StreamStep {
            text: std::mem::replace(&mut self.held, tail),
            stopped: false,
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], tokens: &[&[u8]]) -> (Vec<String>, bool) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        let mut stopped = false;
        for t in tokens {
            let step = s.push(t);
            out.push(step.text);
            if step.stopped {
                stopped = true;
                break;
            }
        }
        if !stopped {
            out.push(s.finish());
        }
        (out, stopped)
    }

    #[test]
    fn multi_byte_characters_are_held_until_complete() {
        let snake = "🐍".as_bytes();
        let (out, _) = run(&[], &[b"a", &snake[..1], &snake[1..3], &snake[3..], b"b"]);
        assert_eq!(out, ["a", "", "", "🐍", "b", ""]);
        assert!(
            out.iter()
                .all(|s| std::str::from_utf8(s.as_bytes()).is_ok())
        );
    }

    #[test]
    fn stop_sequence_split_across_tokens_is_never_shown() {
        let (out, stopped) = run(&["</s>"], &[b"hello <", b"/", b"s> more"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hello ");
        assert_eq!(out[0], "hello ");
    }

    #[test]
    fn a_false_start_of_a_stop_sequence_is_released() {
        let (out, stopped) = run(&["STOP"], &[b"ST", b"ART"]);
        assert!(!stopped);
        assert_eq!(out, ["", "START", ""]);
    }

    #[test]
    fn earliest_stop_wins_and_invalid_bytes_become_replacement() {
        let (out, _) = run(&["b", "a"], &[b"xab"]);
        assert_eq!(out.concat(), "x");
        let (out, _) = run(&[], &[&[0xff], b"ok"]);
        assert_eq!(out.concat(), "\u{fffd}ok");
    }
}
