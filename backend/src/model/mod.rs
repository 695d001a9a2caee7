//! Built-in device models.

pub mod pl330;
