//! Property tests: decode(encode(m)) == m for every message type, and
//! decoding arbitrary bytes never panics and never allocates more than a small
//! multiple of the bytes it was given (checked with a tracking allocator).
#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::unix::net::UnixStream;

use proptest::prelude::*;
use vfio_sidecar_protocol::caps::{Capabilities, Limits, SidecarCaps};
use vfio_sidecar_protocol::ext::*;
use vfio_sidecar_protocol::header::{Header, HEADER_SIZE};
use vfio_sidecar_protocol::message::*;

// ---------------------------------------------------------------- allocator

struct Tracking;

thread_local! {
    static MAX_ALLOC: Cell<usize> = const { Cell::new(0) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = MAX_ALLOC.try_with(|m| m.set(m.get().max(layout.size())));
        let _ = ALLOCS.try_with(|m| m.set(m.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = MAX_ALLOC.try_with(|m| m.set(m.get().max(new_size)));
        let _ = ALLOCS.try_with(|m| m.set(m.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn max_alloc_of(f: impl FnOnce()) -> usize {
    MAX_ALLOC.with(|m| m.set(0));
    f();
    MAX_ALLOC.with(|m| m.get())
}

/// Every decoder on `bytes`; must not panic.
fn decode_all(b: &[u8]) {
    let _ = Version::decode(b);
    let _ = DmaMap::decode(b).map(|m| m.is_valid(true, 4096));
    let _ = DmaUnmap::decode(b).map(|m| m.is_valid());
    let _ = DeviceInfo::decode(b).map(|m| m.is_valid_request());
    let _ = RegionInfoRequest::decode(b).map(|m| m.is_valid());
    let _ = RegionInfo::decode_reply(b);
    let _ = RegionIoFdsRequest::decode(b).map(|m| m.is_valid());
    let _ = RegionIoFdsReply::decode(b);
    let _ = IrqInfo::decode(b);
    let _ = SetIrqs::decode(b).map(|m| m.is_valid(b.len() % 3));
    let _ = RegionAccess::decode("R", b, false);
    let _ = RegionAccess::decode("W", b, true);
    let _ = RegionAccess::decode_fixed("W", b);
    let _ = DmaAccess::decode("R", b, false);
    let _ = DmaAccess::decode("W", b, true);
    let _ = RegionWriteMulti::decode(b);
    let _ = RegionWriteMulti::decode_reply(b);
    let _ = DeviceDescRequest::decode(b).map(|m| m.is_valid());
    let _ = DeviceDescReply::decode(b);
    let _ = IrqStatsRequest::decode(b).map(|m| m.is_valid(1 << 20));
    let _ = IrqStatsReply::decode(b);
    let _ = Capabilities::from_version_data(b);
    let _ = serde_json::from_slice::<DeviceDescription>(b);
    if let Ok(h) = <[u8; HEADER_SIZE]>::try_from(b.get(..HEADER_SIZE).unwrap_or_default()) {
        let _ = Header::decode(&h);
    }
}

// --------------------------------------------------------------- strategies

fn sidecar() -> impl Strategy<Value = SidecarCaps> {
    (
        1u32..5,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(version, dma_exec, platform, eoi, exec_enforced)| SidecarCaps {
                version,
                dma_exec,
                platform,
                eoi,
                exec_enforced,
            },
        )
}

fn caps() -> impl Strategy<Value = Capabilities> {
    (
        any::<u32>(),
        1u32..,
        any::<u32>(),
        1u64..,
        any::<bool>(),
        proptest::option::of(sidecar()),
    )
        .prop_map(|(f, x, d, p, w, s)| Capabilities {
            max_msg_fds: f,
            max_data_xfer_size: x,
            max_dma_maps: d,
            pgsizes: p,
            write_multiple: w,
            twin_socket: false,
            migration: false,
            sidecar: s,
        })
}

fn areas() -> impl Strategy<Value = Option<Vec<SparseArea>>> {
    proptest::option::of(proptest::collection::vec(
        (any::<u64>(), any::<u64>()).prop_map(|(offset, size)| SparseArea { offset, size }),
        0..20,
    ))
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9,_-]{0,12}"
}

fn eoi() -> impl Strategy<Value = EoiDesc> {
    let policy = prop_oneof![
        Just(EoiPolicy::ClearRegister),
        Just(EoiPolicy::Resample),
        Just(EoiPolicy::FirstAccess),
        Just(EoiPolicy::None)
    ];
    let clear = proptest::option::of(
        (
            any::<u32>(),
            any::<u64>(),
            prop_oneof![Just(1u32), Just(2), Just(4), Just(8)],
            prop_oneof![Just(ClearMode::W1c), Just(ClearMode::WriteAny)],
            proptest::option::of(0u32..64),
        )
            .prop_map(|(region, offset, width, mode, bit)| ClearReg {
                region,
                offset,
                width,
                mode,
                bit,
            }),
    );
    (policy, clear).prop_map(|(policy, clear)| EoiDesc { policy, clear })
}

fn desc() -> impl Strategy<Value = DeviceDescription> {
    let kind = prop_oneof![
        Just(DeviceKind::Platform),
        Just(DeviceKind::Amba),
        Just(DeviceKind::Pci)
    ];
    let trigger = prop_oneof![
        Just(IrqTrigger::LevelHigh),
        Just(IrqTrigger::LevelLow),
        Just(IrqTrigger::EdgeRising),
        Just(IrqTrigger::EdgeFalling),
        Just(IrqTrigger::EdgeBoth)
    ];
    (
        kind,
        proptest::collection::vec(name(), 0..4),
        proptest::collection::vec(
            (name(), any::<u64>())
                .prop_map(|(name, frequency_hz)| ClockDesc { name, frequency_hz }),
            0..3,
        ),
        proptest::collection::vec(
            (any::<u32>(), name(), proptest::option::of(any::<u64>())).prop_map(
                |(index, name, guest_base)| RegionDesc {
                    index,
                    name,
                    guest_base,
                },
            ),
            0..3,
        ),
        proptest::collection::vec(
            (any::<u32>(), name(), trigger, eoi()).prop_map(|(index, name, trigger, eoi)| {
                IrqDesc {
                    index,
                    name,
                    trigger,
                    eoi,
                }
            }),
            0..3,
        ),
        proptest::option::of(name()),
    )
        .prop_map(|(kind, compatible, clocks, regions, irqs, dt_node_name)| {
            DeviceDescription {
                kind,
                compatible,
                clocks,
                regions,
                irqs,
                dt_node_name,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn header_round_trip(id: u16, c: u16, size: u32, flags: u32, error: u32) {
        let h = Header { msg_id: id, command: c, size, flags, error };
        prop_assert_eq!(Header::decode(&h.encode()), h);
    }

    #[test]
    fn version_round_trip(major: u16, minor: u16, caps in caps()) {
        let v = Version { major, minor, caps };
        prop_assert_eq!(Version::decode(&v.encode()).unwrap(), v);
    }

    #[test]
    fn dma_round_trip(a: u32, f: u32, o: u64, addr: u64, s: u64) {
        let m = DmaMap { argsz: a, flags: f, offset: o, address: addr, size: s };
        prop_assert_eq!(DmaMap::decode(&m.encode()).unwrap(), m);
        let u = DmaUnmap { argsz: a, flags: f, address: addr, size: s };
        prop_assert_eq!(DmaUnmap::decode(&u.encode()).unwrap(), u);
        let r = DmaAccess { address: addr, count: 0, data: vec![] };
        prop_assert_eq!(DmaAccess::decode("R", &r.encode(), false).unwrap(), r);
    }

    #[test]
    fn dma_access_round_trip(addr: u64, data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let w = DmaAccess { address: addr, count: data.len() as u64, data };
        prop_assert_eq!(DmaAccess::decode("W", &w.encode(), true).unwrap(), w);
    }

    #[test]
    fn info_round_trips(a: u32, f: u32, x: u32, y: u32) {
        let d = DeviceInfo { argsz: a, flags: f, num_regions: x, num_irqs: y };
        prop_assert_eq!(DeviceInfo::decode(&d.encode()).unwrap(), d);
        let i = IrqInfo { argsz: a, flags: f, index: x, count: y };
        prop_assert_eq!(IrqInfo::decode(&i.encode()).unwrap(), i);
        let r = RegionInfoRequest { argsz: a, index: x };
        prop_assert_eq!(RegionInfoRequest::decode(&r.encode()).unwrap(), r);
        let q = RegionIoFdsRequest { argsz: a, flags: f, index: x, count: y };
        prop_assert_eq!(RegionIoFdsRequest::decode(&q.encode()).unwrap(), q);
        let s = IrqStatsRequest { argsz: a, index: f, start: x, count: y };
        prop_assert_eq!(IrqStatsRequest::decode(&s.encode()).unwrap(), s);
        let dd = DeviceDescRequest { argsz: a };
        prop_assert_eq!(DeviceDescRequest::decode(&dd.encode()).unwrap(), dd);
    }

    #[test]
    fn region_info_round_trip(index: u32, flags: u32, size: u64, offset: u64, sparse in areas(), extra in 0u32..64) {
        let info = RegionInfo { index, flags: flags & !REGION_INFO_FLAG_CAPS, size, offset, sparse };
        let full = info.full_size() as u32;
        let r = RegionInfo::decode_reply(&info.encode_reply(full + extra)).unwrap();
        prop_assert_eq!(r.argsz, full);
        let mut want = info.clone();
        if want.sparse.is_some() {
            want.flags |= REGION_INFO_FLAG_CAPS;
        }
        prop_assert_eq!(&r.info, &want);
        // Too small: same fixed part, no areas, argsz = needed.
        if info.sparse.is_some() {
            let r = RegionInfo::decode_reply(&info.encode_reply(full - 1)).unwrap();
            prop_assert!(r.is_truncated());
            prop_assert_eq!(r.argsz, full);
            prop_assert_eq!(r.info.size, size);
        }
    }

    #[test]
    fn region_io_fds_round_trip(index: u32, subs in proptest::collection::vec(
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>())
            .prop_map(|(offset, size, fd_index, kind, flags, data)| SubRegionIoFd { offset, size, fd_index, kind, flags, data }),
        0..10)) {
        let (b, complete) = RegionIoFdsReply::encode(index, &subs, u32::MAX);
        prop_assert!(complete);
        let r = RegionIoFdsReply::decode(&b).unwrap();
        prop_assert_eq!(r.subregions, subs);
        prop_assert_eq!(r.index, index);
    }

    #[test]
    fn set_irqs_round_trip(a: u32, f: u32, i: u32, s: u32, c: u32, bools in proptest::collection::vec(any::<bool>(), 0..50)) {
        let m = SetIrqs { argsz: a, flags: f, index: i, start: s, count: c, bools };
        prop_assert_eq!(SetIrqs::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn region_access_round_trip(offset: u64, region: u32, data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let w = RegionAccess { offset, region, count: data.len() as u32, data };
        prop_assert_eq!(RegionAccess::decode("W", &w.encode(), true).unwrap(), w.clone());
        let r = RegionAccess { data: vec![], ..w };
        prop_assert_eq!(RegionAccess::decode("R", &r.encode(), false).unwrap(), r);
    }

    #[test]
    fn write_multi_round_trip(ws in proptest::collection::vec(
        (any::<u64>(), any::<u32>(), 1u32..=8, any::<[u8; 8]>())
            .prop_map(|(offset, region, count, data)| WriteOne { offset, region, count, data }),
        0..20), done: u64) {
        let m = RegionWriteMulti { writes: ws };
        prop_assert_eq!(RegionWriteMulti::decode(&m.encode()).unwrap(), m);
        prop_assert_eq!(RegionWriteMulti::decode_reply(&RegionWriteMulti::encode_reply(done)).unwrap(), done);
    }

    #[test]
    fn device_desc_round_trip(d in desc(), dtb in proptest::collection::vec(any::<u8>(), 0..100)) {
        let json = serde_json::to_vec(&d).unwrap();
        let b = DeviceDescReply::encode(&json, &dtb, u32::MAX);
        let r = DeviceDescReply::decode(&b).unwrap();
        prop_assert_eq!(r.argsz as usize, b.len());
        prop_assert_eq!(&r.dtb, &dtb);
        let back: DeviceDescription = serde_json::from_slice(&r.json).unwrap();
        prop_assert_eq!(back, d);
    }

    #[test]
    fn irq_stats_round_trip(index: u32, start: u32, st in proptest::collection::vec(
        any::<(u64, u64, u64, u64)>().prop_map(|(a, b, c, d)| IrqStats { device_events: a, host_interrupts: b, unmasks: c, refires: d }),
        0..20)) {
        let r = IrqStatsReply { argsz: IrqStatsReply::full_size(st.len()) as u32, index, start, stats: st };
        prop_assert_eq!(IrqStatsReply::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_allocate_little(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let max = max_alloc_of(|| decode_all(&b));
        // serde_json and the decoders only allocate in proportion to the input.
        prop_assert!(max <= 8 * b.len() + 4096, "allocation of {} bytes for {} input bytes", max, b.len());
    }

    #[test]
    fn arbitrary_fields_never_panic(
        count: u32, argsz: u32, n: u64, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        // Structured garbage: plausible fixed parts with hostile counts.
        for prefix in [
            [argsz.to_ne_bytes(), count.to_ne_bytes(), count.to_ne_bytes(), count.to_ne_bytes()].concat(),
            [n.to_ne_bytes(), n.to_ne_bytes()].concat(),
        ] {
            let mut b = prefix;
            b.extend_from_slice(&tail);
            let max = max_alloc_of(|| decode_all(&b));
            prop_assert!(max <= 8 * b.len() + 4096, "allocation of {} bytes for {} input bytes", max, b.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes into a ServerConnection (after a valid VERSION) never
    /// panic, never allocate beyond the message limit, and the connection
    /// either stays usable or closes cleanly.
    #[test]
    fn server_survives_arbitrary_streams(chunks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..200), 0..8)) {
        use std::os::fd::AsFd;
        use vfio_sidecar_protocol::transport::wait_fd;
        use vfio_sidecar_protocol::ServerConnection;
        let limits = Limits { max_data_xfer_size: 4096, ..Limits::default() };
        let (a, b) = UnixStream::pair().unwrap();
        let mut peer = common::RawPeer::new(a);
        let mut conn = ServerConnection::new(b, limits).unwrap();
        let mut h = common::ToyHandler::default();
        // VERSION first, processed on this thread.
        let v = Version { major: 0, minor: 1, caps: Capabilities::default() };
        peer.send(1, &v.encode(), &[]);
        assert!(wait_fd(conn.as_fd(), libc::POLLIN, Some(std::time::Duration::from_secs(1))).unwrap());
        conn.handle_readable(&mut h).unwrap();
        prop_assert!(conn.negotiated().is_some());
        let max = max_alloc_of(|| {
            for c in &chunks {
                peer.send_bytes(c);
                match conn.handle_readable(&mut h) {
                    Ok(vfio_sidecar_protocol::ConnStatus::Open) => {}
                    _ => break,
                }
            }
        });
        prop_assert!(max <= limits.max_msg_size() + 4096, "allocation of {} bytes", max);
    }
}

#[test]
fn tracking_allocator_sees_allocations() {
    let n = max_alloc_of(|| {
        let v = std::hint::black_box(vec![0u8; 100_000]);
        drop(v);
    });
    assert!(n >= 100_000);
    assert!(max_alloc_of(|| {}) < 100_000);
}

/// `Client::region_read_into` and `region_write` do not allocate once warmed
/// up (the benchmark path).
#[test]
fn client_region_io_is_allocation_free_in_steady_state() {
    use vfio_sidecar_protocol::{Client, ClientOptions};
    let (a, b) = UnixStream::pair().unwrap();
    let server = common::spawn_server(b, Limits::default(), common::ToyHandler::default());
    let mut c = Client::from_stream(a, ClientOptions::default()).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        c.region_read_into(0, 0, &mut buf).unwrap();
        c.region_write(0, 0x100, &buf).unwrap();
    }
    ALLOCS.with(|m| m.set(0));
    for i in 0..100u64 {
        c.region_read_into(0, i, &mut buf).unwrap();
        c.region_write(0, 0x100, &buf[..8]).unwrap();
    }
    let n = ALLOCS.with(|m| m.get());
    assert_eq!(n, 0, "{n} allocations in 200 region accesses");
    assert_eq!(buf[0], 99);
    drop(c);
    assert!(server.join().unwrap().1.is_ok());
}
