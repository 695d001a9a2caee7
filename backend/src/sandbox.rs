//! Sandboxing (in progress).
