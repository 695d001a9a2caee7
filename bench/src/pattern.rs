//! Raw ping-pongs with vfio-sidecar's system calls but no protocol code:
//! they split the gap between the raw round trip (blocking `write`/`read`)
//! and the real one into "the calls it must make" and "everything else"
//! (framing, dispatch, device model).
//!
//! * `calls` ([`calls_client_round_trip`], [`calls_serve`]): what
//!   vfio-sidecar makes now for a trapped access. Client: `send` + one
//!   blocking `recvmsg`; server (its connection thread): one blocking
//!   `recvmsg` + `send`.
//! * `lean` ([`lean_client_round_trip`], [`lean_serve`]): client `sendmsg` +
//!   one blocking `recvmsg`, an epoll server (`epoll_wait` + `recvmsg` +
//!   `sendmsg`): what vfio-sidecar made before its connection thread and
//!   fast paths.
//!
//! Every `recvmsg` passes a control buffer for 16 fds, as the transport does.

use std::os::fd::RawFd;

/// Control buffer of the transport: room for 16 fds.
#[repr(C, align(8))]
struct Cmsg([u8; 128]);

fn recvmsg_flags(fd: RawFd, buf: &mut [u8], flags: i32) -> isize {
    let mut c = Cmsg([0; 128]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = c.0.as_mut_ptr().cast();
    msg.msg_controllen = c.0.len();
    // SAFETY: msg points at a live iovec over `buf` and a live control buffer.
    unsafe { libc::recvmsg(fd, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) }
}

fn sendmsg(fd: RawFd, buf: &[u8]) -> isize {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: msg points at a live iovec over `buf`.
    unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) }
}

/// The lean client: `sendmsg`, then one blocking `recvmsg` of the whole
/// reply (the socket is blocking; a real client would bound it with
/// `SO_RCVTIMEO`).
pub fn lean_client_round_trip(fd: RawFd, req: &[u8], reply: &mut [u8]) -> bool {
    sendmsg(fd, req) == req.len() as isize && recv_reply(fd, reply)
}

/// Blocking `recvmsg`s (control buffer) until `reply` is full; false on EOF
/// or error.
fn recv_reply(fd: RawFd, reply: &mut [u8]) -> bool {
    let mut got = 0usize;
    while got < reply.len() {
        let Some(dst) = reply.get_mut(got..) else {
            return false;
        };
        let n = recvmsg_flags(fd, dst, 0);
        if n <= 0 {
            return false;
        }
        got += n as usize;
    }
    true
}

/// The lean server: `epoll_wait`, one `recvmsg` of the whole request,
/// `sendmsg`; no drain (level-triggered epoll reports leftovers again).
pub fn lean_serve(fd: RawFd, req: usize, reply: usize) -> i32 {
    // SAFETY: epoll_create1 returns a new fd or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return 1;
    }
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 1,
    };
    // SAFETY: valid epoll fd, socket fd and event.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return 1;
    }
    let wait = || {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: valid epoll fd and event array of the length passed.
        unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, -1) };
    };
    echo_loop(fd, req, reply, wait, libc::MSG_DONTWAIT, sendmsg)
}

/// The echo servers' loop: `wait()`, one `recvmsg` (control buffer, `flags`)
/// into what is left of the request; once it is whole, `send` the reply.
/// Returns 0 when the peer goes away.
fn echo_loop(
    fd: RawFd,
    req: usize,
    reply: usize,
    wait: impl Fn(),
    flags: i32,
    send: fn(RawFd, &[u8]) -> isize,
) -> i32 {
    let mut rq = vec![0u8; req];
    let rp = vec![0u8; reply];
    let mut got = 0usize;
    loop {
        wait();
        let Some(dst) = rq.get_mut(got..) else {
            return 1;
        };
        let n = recvmsg_flags(fd, dst, flags);
        if n == 0 {
            return 0;
        }
        if n < 0 {
            continue;
        }
        got += n as usize;
        if got < req {
            continue;
        }
        got = 0;
        if send(fd, &rp) != reply as isize {
            return 0;
        }
    }
}

/// The client of [`Pattern::Sidecar`](crate::procs::Pattern): the calls of
/// the protocol `Client`'s trapped-access fast path: one `send` of the
/// request, then one blocking `recvmsg` (control buffer) of the reply.
pub fn calls_client_round_trip(fd: RawFd, req: &[u8], reply: &mut [u8]) -> bool {
    send(fd, req) == req.len() as isize && recv_reply(fd, reply)
}

/// The server of [`Pattern::Sidecar`](crate::procs::Pattern): the calls
/// vfio-sidecar's connection thread makes per request, on a blocking socket:
/// one `recvmsg` (control buffer, as fds may come with any message) of the
/// whole request, then one `send` of the reply. The client is
/// [`calls_client_round_trip`].
pub fn calls_serve(fd: RawFd, req: usize, reply: usize) -> i32 {
    echo_loop(fd, req, reply, || {}, 0, send)
}

fn send(fd: RawFd, buf: &[u8]) -> isize {
    // SAFETY: `buf` is a live buffer of `buf.len()` bytes.
    unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) }
}
