//! Transformer models (being written).
