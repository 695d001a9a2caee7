//! Dropping root: supplementary groups, gid, uid, verification, no_new_privs.

use std::ffi::CString;
use std::io;

use super::{Result, SandboxError};

/// A user, by name or numeric id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    /// A name looked up with `getpwnam_r`.
    Name(String),
    /// A numeric uid (looked up with `getpwuid_r` for its primary group only).
    Id(u32),
}

/// A group, by name or numeric id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSpec {
    /// A name looked up with `getgrnam_r`.
    Name(String),
    /// A numeric gid.
    Id(u32),
}

impl From<&str> for UserSpec {
    /// All-digit strings are ids, anything else a name.
    fn from(s: &str) -> Self {
        match s.parse() {
            Ok(id) if s.bytes().all(|b| b.is_ascii_digit()) => UserSpec::Id(id),
            _ => UserSpec::Name(s.to_string()),
        }
    }
}

impl From<&str> for GroupSpec {
    /// All-digit strings are ids, anything else a name.
    fn from(s: &str) -> Self {
        match s.parse() {
            Ok(id) if s.bytes().all(|b| b.is_ascii_digit()) => GroupSpec::Id(id),
            _ => GroupSpec::Name(s.to_string()),
        }
    }
}

/// The identity the process runs as after [`drop_privileges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// Real, effective and saved uid.
    pub uid: u32,
    /// Real, effective and saved gid.
    pub gid: u32,
}

/// Runs a `get*_r` lookup with a growing buffer. `f` returns the errno (0 = done)
/// and whether an entry was found.
fn with_buffer<T>(
    mut f: impl FnMut(&mut [libc::c_char]) -> (i32, Option<T>),
) -> io::Result<Option<T>> {
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match f(&mut buf) {
            (0, r) => return Ok(r),
            (libc::ERANGE, _) if size < (1 << 20) => size *= 4,
            (e, _) => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// (uid, primary gid) of a passwd entry looked up by name or id.
fn getpw(spec: &UserSpec) -> Result<Option<(u32, u32)>> {
    let cname = match spec {
        UserSpec::Name(n) => {
            Some(
                CString::new(n.as_str()).map_err(|_| SandboxError::UnknownId {
                    kind: "user",
                    name: n.clone(),
                })?,
            )
        }
        UserSpec::Id(_) => None,
    };
    with_buffer(|buf| {
        // SAFETY: passwd is POD; zeroed is a valid value to be overwritten.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = match (&cname, spec) {
            // SAFETY: all pointers are valid for the call; `buf` outlives it.
            (Some(n), _) => unsafe {
                libc::getpwnam_r(
                    n.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                )
            },
            // SAFETY: as above.
            (None, UserSpec::Id(id)) => unsafe {
                libc::getpwuid_r(*id, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result)
            },
            (None, UserSpec::Name(_)) => libc::EINVAL,
        };
        let found = (!result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid));
        (rc, found)
    })
    .map_err(|e| SandboxError::PrivDrop {
        step: "user lookup",
        detail: e.to_string(),
    })
}

/// Resolves a user to (uid, primary gid).
///
/// A numeric uid without a passwd entry resolves to (uid, None): the caller must
/// name a group.
pub fn resolve_user(spec: &UserSpec) -> Result<(u32, Option<u32>)> {
    match (getpw(spec)?, spec) {
        (Some((uid, gid)), _) => Ok((uid, Some(gid))),
        (None, UserSpec::Id(id)) => Ok((*id, None)),
        (None, UserSpec::Name(n)) => Err(SandboxError::UnknownId {
            kind: "user",
            name: n.clone(),
        }),
    }
}

/// Resolves a group to its gid (numeric ids are taken as they are).
pub fn resolve_group(spec: &GroupSpec) -> Result<u32> {
    let name = match spec {
        GroupSpec::Id(id) => return Ok(*id),
        GroupSpec::Name(n) => n,
    };
    let unknown = || SandboxError::UnknownId {
        kind: "group",
        name: name.clone(),
    };
    let cname = CString::new(name.as_str()).map_err(|_| unknown())?;
    let found = with_buffer(|buf| {
        // SAFETY: group is POD; zeroed is a valid value to be overwritten.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call; `buf` outlives it.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        (rc, (!result.is_null()).then_some(grp.gr_gid))
    })
    .map_err(|e| SandboxError::PrivDrop {
        step: "group lookup",
        detail: e.to_string(),
    })?;
    found.ok_or_else(unknown)
}

fn fail(step: &'static str) -> SandboxError {
    SandboxError::PrivDrop {
        step,
        detail: io::Error::last_os_error().to_string(),
    }
}

fn set_no_new_privs() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail("prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// (effective, permitted) capability sets of this thread, 64 bits each.
fn capabilities() -> Result<(u64, u64)> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `hdr` and `data` (two elements, as version 3 requires) are valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(fail("capget"));
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Switches the whole process to `user` (and `group`, default: the user's primary
/// group) for good.
///
/// Steps: `setgroups([])`, `setresgid(g, g, g)`, `setresuid(u, u, u)` (glibc applies
/// these to every thread), then verification: real/effective/saved ids are the
/// target, no supplementary groups remain, `setuid(0)` and `setgid(0)` fail, no
/// capability is left in the effective or permitted set; finally
/// `PR_SET_NO_NEW_PRIVS`. Fds opened before (VFIO container/group/device, the
/// listener) remain usable.
///
/// Not root: if the target is the current identity this only sets no_new_privs;
/// otherwise [`SandboxError::NotRoot`]. Call before spawning threads.
pub fn drop_privileges(user: &UserSpec, group: Option<&GroupSpec>) -> Result<Credentials> {
    let (uid, primary) = resolve_user(user)?;
    let gid = match group {
        Some(g) => resolve_group(g)?,
        None => primary.ok_or_else(|| SandboxError::PrivDrop {
            step: "user lookup",
            detail: format!("uid {uid} has no passwd entry; name a group explicitly"),
        })?,
    };
    // SAFETY: these getters have no preconditions.
    let (euid, cur_uid, cur_gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
    if euid != 0 {
        if uid == euid && uid == cur_uid && gid == cur_gid {
            set_no_new_privs()?;
            return Ok(Credentials { uid, gid });
        }
        return Err(SandboxError::NotRoot { uid, gid, euid });
    }
    if uid == 0 {
        log::warn!("--user resolves to uid 0: the backend keeps root privileges");
    }

    // SAFETY: setgroups with size 0 does not read the (null) list.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(fail("setgroups([])"));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(fail("setresgid"));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(fail("setresuid"));
    }
    verify(uid, gid)?;
    set_no_new_privs()?;
    log::info!("dropped privileges to uid {uid} gid {gid}");
    Ok(Credentials { uid, gid })
}

fn verify(uid: u32, gid: u32) -> Result<()> {
    let bad = |detail: String| SandboxError::PrivDrop {
        step: "verification",
        detail,
    };
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers are valid for writes.
    if unsafe { libc::getresuid(&mut r, &mut e, &mut s) } != 0 {
        return Err(fail("getresuid"));
    }
    if (r, e, s) != (uid, uid, uid) {
        return Err(bad(format!("uids are {r}/{e}/{s}, expected {uid}")));
    }
    // SAFETY: the three pointers are valid for writes.
    if unsafe { libc::getresgid(&mut r, &mut e, &mut s) } != 0 {
        return Err(fail("getresgid"));
    }
    if (r, e, s) != (gid, gid, gid) {
        return Err(bad(format!("gids are {r}/{e}/{s}, expected {gid}")));
    }
    // SAFETY: size 0 only queries the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n != 0 {
        return Err(bad(format!("{n} supplementary groups remain")));
    }
    if uid != 0 {
        // SAFETY: integer argument only; expected to fail.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(bad("setuid(0) succeeded: root can be regained".into()));
        }
        if gid != 0 {
            // SAFETY: integer argument only; expected to fail.
            if unsafe { libc::setgid(0) } == 0 {
                return Err(bad("setgid(0) succeeded: group root can be regained".into()));
            }
        }
        let (eff, perm) = capabilities()?;
        if eff != 0 || perm != 0 {
            return Err(bad(format!(
                "capabilities remain (effective {eff:#x}, permitted {perm:#x})"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sandbox::testutil::{run_child, CHILD_ENV};

    #[test]
    fn specs_parse_and_resolve() {
        assert_eq!(UserSpec::from("65534"), UserSpec::Id(65534));
        assert_eq!(UserSpec::from("nobody"), UserSpec::Name("nobody".into()));
        assert_eq!(UserSpec::from("+1"), UserSpec::Name("+1".into()));
        assert_eq!(GroupSpec::from("0"), GroupSpec::Id(0));
        assert_eq!(
            resolve_user(&UserSpec::Name("root".into())).unwrap(),
            (0, Some(0))
        );
        assert_eq!(resolve_user(&UserSpec::Id(0)).unwrap(), (0, Some(0)));
        assert_eq!(resolve_group(&GroupSpec::Name("root".into())).unwrap(), 0);
        assert_eq!(resolve_group(&GroupSpec::Id(4321)).unwrap(), 4321);
        let err = resolve_user(&UserSpec::Name("no-such-user-vs".into())).unwrap_err();
        assert!(
            matches!(err, SandboxError::UnknownId { kind: "user", .. }),
            "{err}"
        );
        let err = resolve_group(&GroupSpec::Name("no-such-group-vs".into())).unwrap_err();
        assert!(
            matches!(err, SandboxError::UnknownId { kind: "group", .. }),
            "{err}"
        );
        // An unknown numeric uid resolves, but without a primary group.
        assert_eq!(
            resolve_user(&UserSpec::Id(3_999_999)).unwrap(),
            (3_999_999, None)
        );
    }

    #[test]
    #[ignore = "child-process helper for drop_privileges_in_child"]
    fn drop_child() {
        if std::env::var(CHILD_ENV).as_deref() != Ok("drop") {
            return;
        }
        // Something opened while root stays usable afterwards.
        let f = std::fs::File::open("/etc/shadow").unwrap();
        let creds = drop_privileges(&UserSpec::Name("nobody".into()), None).unwrap();
        assert_eq!(creds.uid, 65534);
        // SAFETY: getters without preconditions.
        unsafe {
            assert_eq!(libc::getuid(), 65534);
            assert_eq!(libc::geteuid(), 65534);
            assert_ne!(libc::setuid(0), 0);
            assert_eq!(libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), 1);
        }
        assert!(std::fs::File::open("/etc/shadow").is_err());
        use std::io::Read;
        let mut b = [0u8; 1];
        assert!((&f).read(&mut b).is_ok());
        // Dropping again to the same identity is a no-op; to another one is NotRoot.
        assert!(drop_privileges(&UserSpec::Id(65534), Some(&GroupSpec::Id(creds.gid))).is_ok());
        let err = drop_privileges(&UserSpec::Id(0), Some(&GroupSpec::Id(0))).unwrap_err();
        assert!(matches!(err, SandboxError::NotRoot { .. }), "{err}");
        println!("DROP-OK");
        std::process::exit(0);
    }

    #[test]
    fn drop_privileges_in_child() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0
            || resolve_user(&UserSpec::Name("nobody".into())).is_err()
        {
            eprintln!("skipped: needs root and a 'nobody' user");
            return;
        }
        let out = run_child("sandbox::privs::tests::drop_child", "drop", &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("DROP-OK"),
            "{:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
