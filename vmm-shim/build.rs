//! Builds the bare-metal guest driver (`guest/pl330_guest.S`) with GNU binutils
//! into a flat binary loaded at guest-physical 0x1000 (see `src/layout.rs`).
//! Nothing to do when the target is not x86_64.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const GUEST_SRC: &str = "guest/pl330_guest.S";
/// Must match `layout::CODE_BASE`.
const CODE_BASE: &str = "0x1000";

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("vmm-shim build: {what} failed ({s}): {cmd:?}"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "vmm-shim build: `{}` not found. The guest driver is assembled from source with GNU \
             binutils; install them (Debian/Ubuntu: `apt-get install binutils`) or set AS/LD to \
             their paths.",
            cmd.get_program().to_string_lossy()
        ),
        Err(e) => panic!("vmm-shim build: cannot run {what}: {e}"),
    }
}

fn main() {
    println!("cargo:rerun-if-changed={GUEST_SRC}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AS");
    println!("cargo:rerun-if-env-changed=LD");
    // Only the x86_64 back end runs this guest (the aarch64 one boots Linux).
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_else(|| ".".into()));
    let obj = out.join("pl330_guest.o");
    let bin = out.join("pl330_guest.bin");
    let assembler = env::var("AS").unwrap_or_else(|_| "as".into());
    let linker = env::var("LD").unwrap_or_else(|_| "ld".into());
    run(
        Command::new(&assembler)
            .arg("--32")
            .arg("-o")
            .arg(&obj)
            .arg(GUEST_SRC),
        "assembling the guest driver",
    );
    run(
        Command::new(&linker)
            .args(["-m", "elf_i386", "-e", "_start", "-Ttext", CODE_BASE])
            .args(["--oformat", "binary", "-o"])
            .arg(&bin)
            .arg(&obj),
        "linking the guest driver",
    );
}
