//! Replays the fuzz harness (`fuzz/src/harness.rs`) on its seed inputs and on
//! every file of the committed corpus `fuzz/corpus/protocol_server/`, so the
//! fuzz target's code path runs in every `cargo test` (also where libFuzzer
//! cannot run).
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/harness.rs"]
mod harness;

#[test]
fn seeds_run_cleanly() {
    let seeds = harness::seeds();
    assert!(seeds.len() >= 5);
    for (name, input) in seeds {
        eprintln!("seed {name}: {} bytes", input.len());
        harness::run(&input);
    }
}

#[test]
fn committed_corpus_replays() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/protocol_server");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: no corpus at {}", dir.display());
        return;
    };
    let mut n = 0;
    for e in entries {
        let p = e.unwrap().path();
        if p.is_file() {
            harness::run(&std::fs::read(&p).unwrap());
            n += 1;
        }
    }
    eprintln!("replayed {n} corpus inputs");
    assert!(n > 0, "corpus directory exists but is empty");
}

#[test]
fn seeds_exercise_every_command_successfully() {
    // The full-session seed, run against a real ServerConnection through the
    // harness device, must produce successful replies (not just "no panic").
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use vfio_sidecar_protocol::transport::{wait_fd, Incoming, MessageReader};
    let (_, input) = harness::seeds().into_iter().next().unwrap();
    // Re-run the records by hand to look at the replies.
    let (client, server) = UnixStream::pair().unwrap();
    client.set_nonblocking(true).unwrap();
    let mut conn = vfio_sidecar_protocol::ServerConnection::new(server, harness::LIMITS).unwrap();
    let mut dev = harness::device().unwrap();
    let caps = vfio_sidecar_protocol::caps::Capabilities {
        write_multiple: true,
        sidecar: Some(vfio_sidecar_protocol::caps::SidecarCaps::client_proposal()),
        ..vfio_sidecar_protocol::caps::Capabilities::from_limits(&harness::LIMITS)
    };
    let v = vfio_sidecar_protocol::message::Version {
        major: 0,
        minor: 1,
        caps,
    }
    .encode();
    let mut msgs = vec![harness::msg(0, 1, &v)];
    let mut rest = &input[1..];
    while rest.len() >= 3 {
        let len = (usize::from(rest[0]) | usize::from(rest[1]) << 8) & 0x3fff;
        msgs.push(rest[3..3 + len].to_vec());
        rest = &rest[3 + len..];
    }
    let mut reader = MessageReader::new(&vfio_sidecar_protocol::Limits::default());
    let mem = {
        // SAFETY: memfd_create with a static name; checked.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    };
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut errors = Vec::new();
    for m in &msgs {
        let h = vfio_sidecar_protocol::header::Header::decode(m[..16].try_into().unwrap());
        let nfds = match h.command {
            2 => 1,
            8 if m.len() == 36 => 2,
            _ => 0,
        };
        let fds: Vec<_> = (0..nfds).map(|_| mem.as_raw_fd()).collect();
        vfio_sidecar_protocol::transport::send_message(client.as_fd(), &h, &[&m[16..]], &fds, None)
            .unwrap();
        assert!(wait_fd(
            conn.as_fd(),
            libc::POLLIN,
            Some(std::time::Duration::from_secs(2))
        )
        .unwrap());
        conn.handle_readable(&mut dev).unwrap();
        assert!(wait_fd(
            client.as_fd(),
            libc::POLLIN,
            Some(std::time::Duration::from_secs(2))
        )
        .unwrap());
        let r = loop {
            if let Some(Incoming::Message(r)) = reader.read_message(client.as_fd()).unwrap() {
                break r;
            }
        };
        assert_eq!(r.header.msg_id, h.msg_id);
        if r.header.is_error() {
            errors.push((h.command, r.header.error));
        }
    }
    // Only the deliberately unknown command fails.
    assert_eq!(errors, vec![(0x1234, libc::ENOSYS as u32)]);
}
