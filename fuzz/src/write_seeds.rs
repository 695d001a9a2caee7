//! Writes the harness seed inputs into a corpus directory (default
//! `corpus/protocol_server`). Used by `run.sh` when the corpus is empty.

#[path = "harness.rs"]
mod harness;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus/protocol_server".into());
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in harness::seeds() {
        std::fs::write(
            std::path::Path::new(&dir).join(format!("seed-{name}")),
            bytes,
        )?;
    }
    Ok(())
}
