//! Generates the man pages and shell completions of every binary from its clap
//! definition ([`vfio_sidecar::cli::Cli`], [`vmm_shim::cli::command`]):
//!
//! * `docs/man/<bin>.1` and one page per visible subcommand
//!   (`docs/man/vfio-sidecar-serve.1`, `docs/man/vmm-shim-demo.1`, ...);
//! * `contrib/completions/bash/<bin>`, `contrib/completions/zsh/_<bin>`,
//!   `contrib/completions/fish/<bin>.fish`.
//!
//! Regenerate after changing the command line:
//!
//! ```text
//! cargo run -p vfio-sidecar-tests --bin gen-docs
//! ```
//!
//! (writes into the workspace root; `-- --out DIR` writes elsewhere). A unit
//! test of this binary regenerates into a temporary directory and compares
//! byte for byte with the committed files, so they cannot drift.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// The command to tell people to run.
const REGEN: &str = "cargo run -p vfio-sidecar-tests --bin gen-docs";
/// The binaries whose docs are generated, with their clap commands.
fn binaries() -> Vec<(&'static str, clap::Command)> {
    vec![
        ("vfio-sidecar", vfio_sidecar::cli::Cli::command()),
        ("vmm-shim", vmm_shim::cli::command()),
    ]
}

/// Every generated file: (path relative to the output root, contents).
fn generate() -> Result<Vec<(PathBuf, Vec<u8>)>, std::io::Error> {
    let mut out = Vec::new();
    for (bin, cmd) in binaries() {
        generate_one(bin, cmd, &mut out)?;
    }
    Ok(out)
}

/// The files of one binary.
fn generate_one(
    bin: &'static str,
    cmd: clap::Command,
    out: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<(), std::io::Error> {
    let mut page = Vec::new();
    // No `help` subcommand in the pages: it would point at a `<bin>-help(1)`
    // page that does not exist (`<bin> help` and `--help` stay in the binary).
    let man_cmd = cmd.clone().disable_help_subcommand(true);
    clap_mangen::Man::new(man_cmd).render(&mut page)?;
    page.extend_from_slice(extra_sections(bin).as_bytes());
    out.push((PathBuf::from(format!("docs/man/{bin}.1")), page));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap names are `&'static str` without its "string" feature; this
        // one-shot generator leaks a few short strings.
        let name: &'static str = Box::leak(format!("{bin}-{}", sub.get_name()).into_boxed_str());
        let bin_name: &'static str =
            Box::leak(format!("{bin} {}", sub.get_name()).into_boxed_str());
        let sub = sub.clone().name(name).bin_name(bin_name);
        let mut page = Vec::new();
        clap_mangen::Man::new(sub)
            .source(format!("{bin} {}", env!("CARGO_PKG_VERSION")))
            .render(&mut page)?;
        out.push((PathBuf::from(format!("docs/man/{name}.1")), page));
    }
    for (shell, path) in [
        (Shell::Bash, format!("contrib/completions/bash/{bin}")),
        (Shell::Zsh, format!("contrib/completions/zsh/_{bin}")),
        (Shell::Fish, format!("contrib/completions/fish/{bin}.fish")),
    ] {
        let mut c = cmd.clone();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut c, bin, &mut buf);
        if shell == Shell::Bash {
            buf = fix_bash_states(bin, &buf);
        }
        out.push((PathBuf::from(path), buf));
    }
    Ok(())
}

/// The ENVIRONMENT, FILES and EXIT STATUS sections of a binary's main page
/// (roff), written here beside the clap definition so the page is generated
/// whole and cannot drift from the other sections.
fn extra_sections(bin: &str) -> String {
    let common_env = "\\fBRUST_LOG\\fR\n.RS\nLog filter (env_logger syntax, e.g. \\fIdebug\\fR or \\fIvfio_sidecar=trace\\fR); overrides \\fB\\-v\\fR. A value that enables no log of this program is ignored with a warning.\n.RE\n";
    match bin {
        "vfio-sidecar" => format!(
            ".SH ENVIRONMENT\n.TP\n{common_env}.TP\n\\fBLISTEN_FDS\\fR, \\fBLISTEN_PID\\fR, \\fBLISTEN_FDNAMES\\fR\n\
systemd socket activation: \\fBserve\\fR uses the passed listening socket instead of binding \\fB\\-\\-socket\\fR.\n\
.SH FILES\n.TP\n\\fI/run/vfio\\-sidecar/\\fR\nThe usual directory of \\fBserve\\fR sockets (created with mode 0750 when missing and allowed).\n\
.TP\n\\fI/dev/vfio/vfio\\fR, \\fI/dev/vfio/N\\fR, \\fI/dev/iommu\\fR, \\fI/dev/vfio/devices/\\fR\nVFIO container, groups and iommufd nodes used by \\fBserve \\-\\-device vfio:\\fR.\n\
.TP\n\\fI/sys/bus/{{pci,platform,amba}}/devices/\\fR\nDevices that \\fBlist\\fR reports and \\fBbind\\fR hands to VFIO.\n\
.SH EXIT STATUS\n0 on success (\\fBserve\\fR: after SIGTERM, SIGINT, SIGHUP, SIGQUIT or SIGUSR1, with the socket removed); 1 on any error, with one line on standard error naming it; 2 for a command-line usage error.\n"
        ),
        _ => format!(
            ".SH ENVIRONMENT\n.TP\n{common_env}\
.SH FILES\n.TP\n\\fI/dev/kvm\\fR\nThe KVM device the guest runs on.\n.TP\n\\fIvfio\\-sidecar\\fR\nThe backend binary \\fBdemo\\fR starts when it lies next to this binary.\n\
.SH EXIT STATUS\n0 when the guest ran and every check passed; 1 on a failed check or an error, with the reason on standard error; 2 for a command-line usage error.\n"
        ),
    }
}

/// clap_complete's bash script names its states inconsistently for a binary
/// with a hyphen: it sets `cmd="vfio__sidecar__subcmd__serve"` while matching
/// `vfio__subcmd__sidecar__subcmd__serve)`, so nothing completes after the
/// subcommand. The states are renamed to the form the script sets.
fn fix_bash_states(bin: &str, script: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let wrong = format!("{}__subcmd__", bin.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", bin.replace('-', "__"));
    if bin.contains('-') {
        text.replace(&wrong, &right).into_bytes()
    } else {
        text.into_owned().into_bytes()
    }
}

fn write_all(root: &Path) -> Result<Vec<PathBuf>, String> {
    let files = generate().map_err(|e| format!("rendering: {e}"))?;
    let mut written = Vec::new();
    for (rel, data) in files {
        let p = root.join(&rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))?;
        written.push(rel);
    }
    Ok(written)
}

/// The workspace root (this crate lives in `tests/`).
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut root = workspace_root();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => match args.next() {
                Some(d) => root = PathBuf::from(d),
                None => {
                    eprintln!("--out needs a directory");
                    std::process::exit(2);
                }
            },
            "-h" | "--help" => {
                println!("usage: {REGEN} [-- --out DIR]\nWrites docs/man/*.1 and contrib/completions/ under DIR (default: the workspace root).");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    match write_all(&root) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", root.join(f).display());
            }
        }
        Err(e) => {
            eprintln!("gen-docs: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The committed man pages and completions equal what the current clap
    /// definition generates (regenerated into a temporary directory).
    #[test]
    fn committed_docs_are_current() {
        let tmp = std::env::temp_dir().join(format!("gen-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let files = write_all(&tmp).unwrap();
        let root = workspace_root();
        let mut stale = Vec::new();
        for rel in &files {
            let fresh = std::fs::read(tmp.join(rel)).unwrap();
            match std::fs::read(root.join(rel)) {
                Ok(old) if old == fresh => {}
                Ok(_) => stale.push(format!("{} differs", rel.display())),
                Err(_) => stale.push(format!("{} is missing", rel.display())),
            }
        }
        // Pages of removed subcommands must go too.
        if let Ok(dir) = std::fs::read_dir(root.join("docs/man")) {
            for e in dir.flatten() {
                let rel = PathBuf::from("docs/man").join(e.file_name());
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = binaries().iter().any(|(b, _)| name.starts_with(b));
                if ours && name.ends_with(".1") && !files.contains(&rel) {
                    stale.push(format!("{} is no longer generated", rel.display()));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(
            stale.is_empty(),
            "generated docs are out of date ({}): run `{REGEN}` to regenerate",
            stale.join("; ")
        );
    }

    /// Runs the generated bash completion function in a real bash for
    /// `WORDS...` (the last one being completed) and returns COMPREPLY.
    fn bash_complete(bin: &str, script: &[u8], words: &[&str]) -> String {
        // One directory per call: the tests run in parallel in one process.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gen-docs-bash-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(bin);
        std::fs::write(&f, script).unwrap();
        let func = format!("_{}", bin.replace('-', "__"));
        let cword = words.len() - 1;
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let prog = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={cword}; {func} {bin} '{}' '{}'; echo \"${{COMPREPLY[*]}}\"",
            f.display(),
            quoted.join(" "),
            words[cword],
            words[cword - 1],
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &prog])
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn bash_completion_works_after_the_subcommand() {
        let files = generate().unwrap();
        for (bin, sub, opt) in [
            ("vfio-sidecar", "serve", "--socket"),
            ("vmm-shim", "run", "--socket"),
        ] {
            let script = &files
                .iter()
                .find(|(p, _)| p == &PathBuf::from(format!("contrib/completions/bash/{bin}")))
                .unwrap()
                .1;
            let subs = bash_complete(bin, script, &[bin, &sub[..1]]);
            assert!(
                subs.split(' ').any(|w| w == sub),
                "{bin} {}: {subs:?}",
                &sub[..1]
            );
            let opts = bash_complete(bin, script, &[bin, sub, "--so"]);
            assert!(
                opts.split(' ').any(|w| w == opt),
                "{bin} {sub} --so: {opts:?}"
            );
        }
    }

    #[test]
    fn pages_cover_every_subcommand() {
        let files = generate().unwrap();
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        for want in [
            "docs/man/vfio-sidecar.1",
            "docs/man/vfio-sidecar-serve.1",
            "docs/man/vfio-sidecar-dt.1",
            "docs/man/vfio-sidecar-probe.1",
            "contrib/completions/bash/vfio-sidecar",
            "contrib/completions/zsh/_vfio-sidecar",
            "contrib/completions/fish/vfio-sidecar.fish",
            "docs/man/vmm-shim.1",
            "docs/man/vmm-shim-demo.1",
            "docs/man/vmm-shim-run.1",
            "docs/man/vmm-shim-dtb.1",
            "contrib/completions/bash/vmm-shim",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} not generated: {names:?}"
            );
        }
        let probe = &files
            .iter()
            .find(|(p, _)| p.ends_with("vfio-sidecar-probe.1"))
            .unwrap()
            .1;
        let text = String::from_utf8_lossy(probe);
        assert!(text.contains("\\-\\-json"), "{text}");
        let bash = &files
            .iter()
            .find(|(p, _)| p.ends_with("bash/vfio-sidecar"))
            .unwrap()
            .1;
        assert!(String::from_utf8_lossy(bash).contains("probe"));
    }
}
