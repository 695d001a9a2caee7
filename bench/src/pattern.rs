//! The raw ping-pong with the syscall pattern vfio-sidecar had before the
//! one-receive transport (9 calls per request; now it makes the 5 of `lean`)
//! but no protocol code: splits the gap between the raw round trip and the real one into
//! "system calls" and "everything else" (framing, dispatch, device model).
//!
//! Client: `sendmsg`, `poll`, `recvmsg` (16-byte header), `recvmsg` (rest).
//! Server: `epoll_wait`, `recvmsg` (header), `recvmsg` (rest), `sendmsg`,
//! `recvmsg` (→ EAGAIN: the drain of `ServerConnection::handle_readable`).
//! Every `recvmsg` passes a control buffer for 16 fds, as the transport does.

use std::os::fd::RawFd;

/// Header bytes read first.
const HDR: usize = 16;

/// Control buffer of the transport: room for 16 fds.
#[repr(C, align(8))]
struct Cmsg([u8; 128]);

fn recvmsg(fd: RawFd, buf: &mut [u8]) -> isize {
    recvmsg_flags(fd, buf, libc::MSG_DONTWAIT)
}

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

/// Reads exactly `buf.len()` bytes with the reader's calls (header, rest),
/// `got` bytes being there already; false on EOF or error.
fn read_split(fd: RawFd, buf: &mut [u8], mut got: usize, wait: impl Fn()) -> bool {
    while got < buf.len() {
        let want = if got < HDR {
            HDR.min(buf.len())
        } else {
            buf.len()
        };
        let Some(dst) = buf.get_mut(got..want) else {
            return false;
        };
        let n = recvmsg(fd, dst);
        if n > 0 {
            got += n as usize;
        } else if n == 0 {
            return false;
        } else if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
            wait();
        } else {
            return false;
        }
    }
    true
}

fn poll_in(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, -1) };
}

/// The lean client: `sendmsg`, then one blocking `recvmsg` of the whole
/// reply (the socket is blocking; a real client would bound it with
/// `SO_RCVTIMEO`).
pub fn lean_client_round_trip(fd: RawFd, req: &[u8], reply: &mut [u8]) -> bool {
    if sendmsg(fd, req) != req.len() as isize {
        return false;
    }
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
    let mut rq = vec![0u8; req];
    let rp = vec![0u8; reply];
    let mut got = 0usize;
    loop {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: valid epoll fd and event array of the length passed.
        unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, -1) };
        let Some(dst) = rq.get_mut(got..) else {
            return 1;
        };
        let n = recvmsg(fd, dst);
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
        if sendmsg(fd, &rp) != reply as isize {
            return 0;
        }
    }
}

/// The client side of one round trip.
pub fn client_round_trip(fd: RawFd, req: &[u8], reply: &mut [u8]) -> bool {
    if sendmsg(fd, req) != req.len() as isize {
        return false;
    }
    poll_in(fd);
    read_split(fd, reply, 0, || poll_in(fd))
}

/// The server loop (until the peer goes away).
pub fn serve(fd: RawFd, req: usize, reply: usize) -> i32 {
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
    let mut rq = vec![0u8; req];
    let rp = vec![0u8; reply];
    let wait = || {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: valid epoll fd and event array of the length passed.
        unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, -1) };
    };
    let mut got = 0usize;
    loop {
        if got == 0 {
            wait();
        }
        if !read_split(fd, &mut rq, got, wait) {
            return 0;
        }
        if sendmsg(fd, &rp) != reply as isize {
            return 0;
        }
        // The drain: usually nothing (EAGAIN); if the client was quicker, the
        // bytes are the next request's header, kept like the reader does.
        let first = HDR.min(rq.len());
        let n = match rq.get_mut(..first) {
            Some(h) => recvmsg(fd, h),
            None => return 1,
        };
        got = match n {
            0 => return 0,
            n if n > 0 => n as usize,
            _ => 0,
        };
    }
}
