//! (in progress)

use crate::cli::ServeArgs;

/// Serve errors.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Not yet.
    #[error("serve: not implemented yet")]
    NotYet,
}

/// Runs the server until SIGTERM/SIGINT.
pub fn run_serve(_args: ServeArgs) -> Result<(), ServeError> {
    Err(ServeError::NotYet)
}
