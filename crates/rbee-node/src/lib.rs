//! rbee-node: see docs/ARCHITECTURE.md. This crate is filled in by its own issue; its place in the dependency order is fixed now.
