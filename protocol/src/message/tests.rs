#![allow(clippy::unwrap_used)]
use super::*;
use crate::caps::{Capabilities, SidecarCaps};
use crate::error::DecodeError;

fn is_trunc<T: std::fmt::Debug>(r: Result<T, DecodeError>) -> bool {
    matches!(r, Err(DecodeError::Truncated { .. }))
}

fn is_len<T: std::fmt::Debug>(r: Result<T, DecodeError>) -> bool {
    matches!(r, Err(DecodeError::Length { .. }))
}

#[test]
fn version_round_trip_truncated_bad() {
    let v = Version {
        major: 0,
        minor: 1,
        caps: Capabilities {
            sidecar: Some(SidecarCaps::client_proposal()),
            ..Capabilities::default()
        },
    };
    let b = v.encode();
    assert_eq!(*b.last().unwrap(), 0);
    assert_eq!(Version::decode(&b).unwrap(), v);
    assert!(is_trunc(Version::decode(&b[..3])));
    // Major/minor only: default caps.
    let v0 = Version::decode(&b[..4]).unwrap();
    assert_eq!(v0.caps, Capabilities::default());
    // Missing NUL.
    assert!(Version::decode(&b[..b.len() - 1]).is_err());
    // Garbage JSON.
    let mut g = b[..4].to_vec();
    g.extend_from_slice(b"{not json\0");
    assert_eq!(
        Version::decode(&g).unwrap_err().errno(),
        crate::Errno::EINVAL
    );
}

#[test]
fn dma_map() {
    let m = DmaMap::new(
        DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
        0x1000,
        0x8000_0000,
        0x2000,
    );
    let b = m.encode();
    assert_eq!(b.len(), 32);
    assert_eq!(&b[0..4], &32u32.to_ne_bytes());
    assert_eq!(&b[16..24], &0x8000_0000u64.to_ne_bytes());
    assert_eq!(DmaMap::decode(&b).unwrap(), m);
    assert!(is_trunc(DmaMap::decode(&b[..31])));
    let mut long = b.clone();
    long.push(0);
    assert!(is_len(DmaMap::decode(&long)));
    m.is_valid(false, 4096).unwrap();
    // EXEC only when negotiated.
    let x = DmaMap::new(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_EXEC, 0, 0x1000, 0x1000);
    assert!(x.is_valid(false, 4096).is_err());
    x.is_valid(true, 4096).unwrap();
    // Bits 2 and 3 are never valid.
    for bit in [1 << 2, 1 << 3, 1 << 31] {
        let y = DmaMap::new(DMA_MAP_FLAG_READ | bit, 0, 0x1000, 0x1000);
        assert!(y.is_valid(true, 4096).is_err());
    }
    // Size 0, overflow, misalignment, small argsz.
    assert!(DmaMap::new(1, 0, 0x1000, 0).is_valid(false, 4096).is_err());
    assert!(DmaMap::new(1, 0, u64::MAX - 0xfff, 0x2000)
        .is_valid(false, 4096)
        .is_err());
    assert!(DmaMap::new(1, 0, 0x1800, 0x1000)
        .is_valid(false, 4096)
        .is_err());
    assert!(DmaMap::new(1, 0x10, 0x1000, 0x1000)
        .is_valid(false, 4096)
        .is_err());
    let mut s = m;
    s.argsz = 8;
    assert!(s.is_valid(false, 4096).is_err());
    // Effective permissions.
    let r = DmaMap::new(DMA_MAP_FLAG_READ, 0, 0, 0x1000);
    assert!(r.prot(false).exec, "plain READ implies EXEC");
    assert!(!r.prot(true).exec, "extension: EXEC only if stated");
    assert!(x.prot(true).exec);
    let p = DmaProt {
        read: true,
        write: false,
        exec: true,
    };
    assert_eq!(p.to_flags(true), DMA_MAP_FLAG_READ | DMA_MAP_FLAG_EXEC);
    assert_eq!(p.to_flags(false), DMA_MAP_FLAG_READ);
}

#[test]
fn dma_unmap() {
    let u = DmaUnmap::new(0, 0x4000, 0x1000);
    let b = u.encode();
    assert_eq!(b.len(), 24);
    assert_eq!(DmaUnmap::decode(&b).unwrap(), u);
    assert!(is_trunc(DmaUnmap::decode(&b[..20])));
    assert!(is_len(DmaUnmap::decode(&[b.as_slice(), &[0]].concat())));
    u.is_valid().unwrap();
    let all = DmaUnmap::new(DMA_UNMAP_FLAG_ALL, 0, 0);
    assert_eq!(DMA_UNMAP_FLAG_ALL, 2);
    all.is_valid().unwrap();
    assert!(all.is_all());
    assert!(DmaUnmap::new(DMA_UNMAP_FLAG_ALL, 0x1000, 0)
        .is_valid()
        .is_err());
    assert!(DmaUnmap::new(1, 0x1000, 0x1000).is_valid().is_err()); // dirty bitmap
    assert!(DmaUnmap::new(4, 0x1000, 0x1000).is_valid().is_err());
    assert!(DmaUnmap::new(0, 0x1000, 0).is_valid().is_err());
    assert!(DmaUnmap::new(0, u64::MAX, 2).is_valid().is_err());
}

#[test]
fn device_info() {
    let d = DeviceInfo {
        argsz: 16,
        flags: 1 | 4,
        num_regions: 2,
        num_irqs: 1,
    };
    assert_eq!(DeviceInfo::decode(&d.encode()).unwrap(), d);
    assert!(is_trunc(DeviceInfo::decode(&d.encode()[..15])));
    assert!(is_len(DeviceInfo::decode(&[0u8; 17])));
    DeviceInfo::request().is_valid_request().unwrap();
    let small = DeviceInfo {
        argsz: 8,
        ..DeviceInfo::request()
    };
    assert!(small.is_valid_request().is_err());
}

#[test]
fn region_info_with_and_without_room_for_caps() {
    let info = RegionInfo {
        index: 0,
        flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE | REGION_INFO_FLAG_MMAP,
        size: 0x1000,
        offset: 0x10000,
        sparse: Some(vec![
            SparseArea {
                offset: 0,
                size: 0x800,
            },
            SparseArea {
                offset: 0xc00,
                size: 0x400,
            },
        ]),
    };
    let full = info.full_size();
    assert_eq!(full, 32 + 16 + 32);
    // Enough room: caps included.
    let b = info.encode_reply(full as u32);
    assert_eq!(b.len(), full);
    assert_eq!(&b[0..4], &(full as u32).to_ne_bytes());
    assert_eq!(&b[12..16], &32u32.to_ne_bytes()); // cap_offset
    assert_eq!(&b[32..34], &1u16.to_ne_bytes()); // id
    assert_eq!(&b[34..36], &1u16.to_ne_bytes()); // version
    assert_eq!(&b[40..44], &2u32.to_ne_bytes()); // nr_areas
    let r = RegionInfo::decode_reply(&b).unwrap();
    assert!(!r.is_truncated());
    assert_eq!(r.argsz as usize, full);
    let mut expect = info.clone();
    expect.flags |= REGION_INFO_FLAG_CAPS;
    assert_eq!(r.info, expect);
    // Too small: argsz says what is needed, no caps, cap_offset 0.
    let b = info.encode_reply(32);
    assert_eq!(b.len(), 32);
    assert_eq!(&b[0..4], &(full as u32).to_ne_bytes());
    assert_eq!(&b[12..16], &0u32.to_ne_bytes());
    let r = RegionInfo::decode_reply(&b).unwrap();
    assert!(r.is_truncated());
    assert!(r.info.sparse.is_none());
    // No sparse areas: plain 32 bytes, no CAPS flag.
    let plain = RegionInfo {
        sparse: None,
        ..info.clone()
    };
    let b = plain.encode_reply(1000);
    assert_eq!(b.len(), 32);
    let r = RegionInfo::decode_reply(&b).unwrap();
    assert_eq!(r.info, plain);
    assert_eq!(r.argsz, 32);
    // Truncated / bad capability chains.
    assert!(is_trunc(RegionInfo::decode_reply(&b[..31])));
    let good = info.encode_reply(1000);
    // Cut short: argsz > payload, so it reads as a truncated reply.
    assert!(RegionInfo::decode_reply(&good[..good.len() - 8])
        .unwrap()
        .is_truncated());
    let mut backwards = good.clone();
    backwards[36..40].copy_from_slice(&8u32.to_ne_bytes()); // next < current
    assert!(RegionInfo::decode_reply(&backwards).is_err());
    let mut inside = good.clone();
    inside[12..16].copy_from_slice(&4u32.to_ne_bytes());
    assert!(RegionInfo::decode_reply(&inside).is_err());
    let mut huge = good;
    huge[40..44].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(RegionInfo::decode_reply(&huge).is_err());
    // Request.
    let rq = RegionInfoRequest {
        argsz: 32,
        index: 3,
    };
    assert_eq!(RegionInfoRequest::decode(&rq.encode()).unwrap(), rq);
    assert!(is_trunc(RegionInfoRequest::decode(&[0; 16])));
    assert!(RegionInfoRequest {
        argsz: 16,
        index: 0
    }
    .is_valid()
    .is_err());
}

#[test]
fn region_io_fds() {
    let rq = RegionIoFdsRequest {
        argsz: 1000,
        flags: 0,
        index: 1,
        count: 0,
    };
    assert_eq!(RegionIoFdsRequest::decode(&rq.encode()).unwrap(), rq);
    rq.is_valid().unwrap();
    assert!(RegionIoFdsRequest { flags: 1, ..rq }.is_valid().is_err());
    assert!(RegionIoFdsRequest { argsz: 4, ..rq }.is_valid().is_err());
    let subs = vec![SubRegionIoFd {
        offset: 0x10,
        size: 4,
        fd_index: 0,
        kind: IO_FD_TYPE_IOEVENTFD,
        flags: 1,
        data: 0xdead,
    }];
    let (b, complete) = RegionIoFdsReply::encode(1, &subs, 1000);
    assert!(complete);
    assert_eq!(b.len(), 16 + 40);
    let r = RegionIoFdsReply::decode(&b).unwrap();
    assert_eq!(r.subregions, subs);
    assert_eq!(r.argsz, 56);
    // Zero sub-regions.
    let (b, complete) = RegionIoFdsReply::encode(2, &[], 16);
    assert!(complete);
    assert_eq!(RegionIoFdsReply::decode(&b).unwrap().subregions, vec![]);
    // Too small argsz.
    let (b, complete) = RegionIoFdsReply::encode(1, &subs, 16);
    assert!(!complete);
    let r = RegionIoFdsReply::decode(&b).unwrap();
    assert_eq!(r.argsz, 56);
    assert!(r.subregions.is_empty());
    // Count that does not match the payload.
    let (mut b, _) = RegionIoFdsReply::encode(1, &subs, 1000);
    b[12..16].copy_from_slice(&2u32.to_ne_bytes());
    assert!(is_len(RegionIoFdsReply::decode(&b)));
}

#[test]
fn irq_info() {
    let i = IrqInfo {
        argsz: 16,
        flags: 0xf,
        index: 0,
        count: 3,
    };
    assert_eq!(IrqInfo::decode(&i.encode()).unwrap(), i);
    assert!(is_trunc(IrqInfo::decode(&[0; 12])));
    assert!(is_len(IrqInfo::decode(&[0; 20])));
    assert!(IrqInfo { argsz: 0, ..i }.is_valid_request().is_err());
}

#[test]
fn set_irqs_validation() {
    let s = SetIrqs::new(0, IrqAction::Trigger, IrqDataType::Eventfd, 0, 2, vec![]);
    assert_eq!(s.flags, IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_EVENTFD);
    assert_eq!(SetIrqs::decode(&s.encode()).unwrap(), s);
    s.is_valid(2).unwrap();
    s.is_valid(0).unwrap(); // de-assign
    assert!(matches!(s.is_valid(1), Err(DecodeError::FdCount { .. })));
    assert!(matches!(s.is_valid(3), Err(DecodeError::FdCount { .. })));
    // BOOL: count bytes, no fds.
    let b = SetIrqs::new(
        0,
        IrqAction::Mask,
        IrqDataType::Bool,
        1,
        3,
        vec![true, false, true],
    );
    let enc = b.encode();
    assert_eq!(enc.len(), 23);
    assert_eq!(&enc[20..], &[1, 0, 1]);
    assert_eq!(SetIrqs::decode(&enc).unwrap(), b);
    b.is_valid(0).unwrap();
    assert!(b.is_valid(1).is_err());
    let short = SetIrqs::decode(&enc[..22]).unwrap();
    assert!(short.is_valid(0).is_err());
    // NONE with data.
    let mut n = SetIrqs::new(0, IrqAction::Unmask, IrqDataType::None, 0, 1, vec![]);
    n.is_valid(0).unwrap();
    n.bools.push(true);
    n.argsz += 1;
    assert!(n.is_valid(0).is_err());
    // Two actions, two data types, no action, unknown bit.
    for flags in [
        IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_DATA_NONE,
        IRQ_SET_ACTION_MASK | IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL,
        IRQ_SET_DATA_NONE,
        IRQ_SET_ACTION_TRIGGER,
        IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_NONE | (1 << 6),
    ] {
        let x = SetIrqs {
            flags,
            ..SetIrqs::new(0, IrqAction::Trigger, IrqDataType::None, 0, 1, vec![])
        };
        assert!(x.is_valid(0).is_err(), "flags {flags:#x}");
    }
    // count 0: only NONE|TRIGGER.
    SetIrqs::new(0, IrqAction::Trigger, IrqDataType::None, 0, 0, vec![])
        .is_valid(0)
        .unwrap();
    assert!(
        SetIrqs::new(0, IrqAction::Trigger, IrqDataType::Eventfd, 0, 0, vec![])
            .is_valid(0)
            .is_err()
    );
    assert!(
        SetIrqs::new(0, IrqAction::Mask, IrqDataType::None, 0, 0, vec![])
            .is_valid(0)
            .is_err()
    );
    // Overflow.
    assert!(SetIrqs::new(
        0,
        IrqAction::Trigger,
        IrqDataType::None,
        u32::MAX,
        2,
        vec![]
    )
    .is_valid(0)
    .is_err());
    // argsz too small.
    let mut a = SetIrqs::new(0, IrqAction::Trigger, IrqDataType::None, 0, 1, vec![]);
    a.argsz = 4;
    assert!(a.is_valid(0).is_err());
    assert!(is_trunc(SetIrqs::decode(&[0; 19])));
}

#[test]
fn region_access() {
    let w = RegionAccess {
        offset: 0x20,
        region: 1,
        count: 4,
        data: vec![1, 2, 3, 4],
    };
    let b = w.encode();
    assert_eq!(b.len(), 20);
    assert_eq!(RegionAccess::decode("W", &b, true).unwrap(), w);
    assert!(is_len(RegionAccess::decode("W", &b[..19], true)));
    assert!(is_len(RegionAccess::decode("R", &b, false)));
    assert!(is_trunc(RegionAccess::decode("R", &b[..15], false)));
    let r = RegionAccess {
        data: vec![],
        ..w.clone()
    };
    assert_eq!(RegionAccess::decode("R", &r.encode(), false).unwrap(), r);
}

#[test]
fn dma_access() {
    let w = DmaAccess {
        address: 0x1000,
        count: 3,
        data: vec![9, 8, 7],
    };
    let b = w.encode();
    assert_eq!(DmaAccess::decode("DMA_WRITE", &b, true).unwrap(), w);
    assert!(is_len(DmaAccess::decode("DMA_WRITE", &b[..18], true)));
    assert!(is_trunc(DmaAccess::decode("DMA_READ", &b[..10], false)));
    let r = DmaAccess { data: vec![], ..w };
    assert_eq!(
        DmaAccess::decode("DMA_READ", &r.encode(), false).unwrap(),
        r
    );
    // A huge count with no data is rejected, not allocated.
    let mut h = r.encode();
    h[8..16].copy_from_slice(&u64::MAX.to_ne_bytes());
    assert!(DmaAccess::decode("DMA_WRITE", &h, true).is_err());
}

#[test]
fn region_write_multi() {
    let m = RegionWriteMulti {
        writes: vec![
            WriteOne {
                offset: 0,
                region: 0,
                count: 4,
                data: [1, 2, 3, 4, 0, 0, 0, 0],
            },
            WriteOne {
                offset: 8,
                region: 2,
                count: 8,
                data: [9; 8],
            },
        ],
    };
    let b = m.encode();
    assert_eq!(b.len(), 8 + 48);
    assert_eq!(RegionWriteMulti::decode(&b).unwrap(), m);
    assert!(is_len(RegionWriteMulti::decode(&b[..b.len() - 1])));
    let mut wrong = b.clone();
    wrong[0..8].copy_from_slice(&3u64.to_ne_bytes());
    assert!(is_len(RegionWriteMulti::decode(&wrong)));
    let mut huge = b.clone();
    huge[0..8].copy_from_slice(&u64::MAX.to_ne_bytes());
    assert!(RegionWriteMulti::decode(&huge).is_err());
    let mut bad = b;
    bad[20..24].copy_from_slice(&9u32.to_ne_bytes());
    assert!(RegionWriteMulti::decode(&bad).is_err());
    assert_eq!(
        RegionWriteMulti::decode_reply(&RegionWriteMulti::encode_reply(2)).unwrap(),
        2
    );
    assert!(is_trunc(RegionWriteMulti::decode(&[0; 4])));
}

#[test]
fn device_desc() {
    let rq = DeviceDescRequest { argsz: 4096 };
    assert_eq!(DeviceDescRequest::decode(&rq.encode()).unwrap(), rq);
    rq.is_valid().unwrap();
    assert!(DeviceDescRequest { argsz: 8 }.is_valid().is_err());
    assert!(is_trunc(DeviceDescRequest::decode(&[0; 4])));
    let json = br#"{"kind":"amba","compatible":[]}"#;
    let dtb = [0xd0, 0x0d, 0xfe, 0xed];
    let b = DeviceDescReply::encode(json, &dtb, 4096);
    assert_eq!(b.len(), 16 + json.len() + 4);
    assert_eq!(&b[4..8], &(json.len() as u32).to_ne_bytes());
    assert_eq!(&b[8..12], &4u32.to_ne_bytes());
    let r = DeviceDescReply::decode(&b).unwrap();
    assert_eq!(r.json, json);
    assert_eq!(r.dtb, dtb);
    assert_eq!(r.argsz as usize, b.len());
    // Too small: argsz = needed, no payload.
    let s = DeviceDescReply::encode(json, &dtb, 16);
    assert_eq!(s.len(), 16);
    let r = DeviceDescReply::decode(&s).unwrap();
    assert_eq!(r.argsz as usize, 16 + json.len() + 4);
    assert!(r.json.is_empty() && r.dtb.is_empty());
    // Lengths that do not add up.
    let mut bad = b.clone();
    bad[8..12].copy_from_slice(&5u32.to_ne_bytes());
    assert!(is_len(DeviceDescReply::decode(&bad)));
    let mut bad = b;
    bad[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(DeviceDescReply::decode(&bad).is_err());
}

#[test]
fn irq_stats() {
    let rq = IrqStatsRequest::new(0, 1, 2);
    assert_eq!(rq.argsz, 16 + 64);
    assert_eq!(IrqStatsRequest::decode(&rq.encode()).unwrap(), rq);
    rq.is_valid(1 << 16).unwrap();
    assert!(IrqStatsRequest { argsz: 4, ..rq }
        .is_valid(1 << 16)
        .is_err());
    assert!(IrqStatsRequest::new(0, u32::MAX, 2)
        .is_valid(1 << 16)
        .is_err());
    assert!(IrqStatsRequest::new(0, 0, 1 << 20)
        .is_valid(1 << 16)
        .is_err());
    let r = IrqStatsReply {
        argsz: 80,
        index: 0,
        start: 1,
        stats: vec![
            IrqStats {
                device_events: 1,
                host_interrupts: 2,
                unmasks: 3,
                refires: 4,
            },
            IrqStats::default(),
        ],
    };
    let b = r.encode();
    assert_eq!(b.len(), 80);
    assert_eq!(&b[16..24], &1u64.to_ne_bytes());
    assert_eq!(&b[40..48], &4u64.to_ne_bytes());
    assert_eq!(IrqStatsReply::decode(&b).unwrap(), r);
    assert!(is_len(IrqStatsReply::decode(&b[..70])));
    assert!(is_trunc(IrqStatsReply::decode(&b[..10])));
}

#[test]
fn empty_messages() {
    decode_empty("DEVICE_RESET", &[]).unwrap();
    assert!(is_len(decode_empty("DEVICE_RESET", &[0])));
}

#[test]
fn region_info_truncated_reply_with_stale_cap_offset() {
    // Some servers (the vfio_user crate) keep cap_offset = 32 in a reply that
    // has no room for the caps; argsz > payload marks it as truncated.
    let mut b = Vec::new();
    for v in [80u32, REGION_INFO_FLAG_CAPS | REGION_INFO_FLAG_MMAP, 1, 32] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b.extend_from_slice(&0x2000u64.to_ne_bytes());
    b.extend_from_slice(&0u64.to_ne_bytes());
    let r = RegionInfo::decode_reply(&b).unwrap();
    assert!(r.is_truncated());
    assert_eq!(r.argsz, 80);
}

#[test]
fn error_texts() {
    fn text<T: std::fmt::Debug>(r: Result<T, DecodeError>) -> String {
        r.unwrap_err().to_string()
    }
    let argsz = |n: u32| {
        [
            text(
                DmaMap {
                    argsz: n,
                    ..DmaMap::new(1, 0, 0, 0x1000)
                }
                .is_valid(false, 4096),
            ),
            text(
                DmaUnmap {
                    argsz: n,
                    ..DmaUnmap::new(0, 0, 1)
                }
                .is_valid(),
            ),
            text(
                DeviceInfo {
                    argsz: n,
                    ..DeviceInfo::request()
                }
                .is_valid_request(),
            ),
            text(RegionInfoRequest { argsz: n, index: 0 }.is_valid()),
            text(
                RegionIoFdsRequest {
                    argsz: n,
                    flags: 0,
                    index: 0,
                    count: 0,
                }
                .is_valid(),
            ),
            text(
                IrqInfo {
                    argsz: n,
                    ..IrqInfo::request(0)
                }
                .is_valid_request(),
            ),
            text(DeviceDescRequest { argsz: n }.is_valid()),
            text(
                IrqStatsRequest {
                    argsz: n,
                    ..IrqStatsRequest::new(0, 0, 1)
                }
                .is_valid(4096),
            ),
        ]
    };
    assert_eq!(
        argsz(3),
        [
            "DMA_MAP: argsz 3 < 32",
            "DMA_UNMAP: argsz 3 < 24",
            "DEVICE_GET_INFO: argsz 3 < 16",
            "DEVICE_GET_REGION_INFO: argsz 3 < 32",
            "DEVICE_GET_REGION_IO_FDS: argsz 3 < 16",
            "DEVICE_GET_IRQ_INFO: argsz 3 < 16",
            "SIDECAR_GET_DEVICE_DESC: argsz 3 < 16",
            "SIDECAR_GET_IRQ_STATS: argsz 3 < 16",
        ]
    );
    assert_eq!(
        text(DmaMap::decode(&[0; 31])),
        "DMA_MAP: payload too short (need 32 bytes, have 31)"
    );
    assert_eq!(
        text(DmaMap::decode(&[0; 33])),
        "DMA_MAP: payload length 33 does not match the expected 32"
    );
    assert_eq!(
        text(decode_empty("DEVICE_RESET", &[0])),
        "DEVICE_RESET: payload length 1 does not match the expected 0"
    );
    assert_eq!(
        text(RegionAccess::decode(
            "REGION_WRITE",
            &RegionAccess::encode_fixed(0, 0, 4),
            true
        )),
        "REGION_WRITE: payload length 16 does not match the expected 20"
    );
    let mut dma = DmaAccess {
        address: 0,
        count: 0,
        data: vec![],
    }
    .encode();
    dma[8..16].copy_from_slice(&u64::MAX.to_ne_bytes());
    assert_eq!(
        text(DmaAccess::decode("DMA_WRITE", &dma, true)),
        format!(
            "DMA_WRITE: payload length 16 does not match the expected {}",
            usize::MAX
        )
    );
    let mut wm = RegionWriteMulti {
        writes: vec![WriteOne {
            offset: 0,
            region: 0,
            count: 4,
            data: [0; 8],
        }],
    }
    .encode();
    wm[20..24].copy_from_slice(&9u32.to_ne_bytes());
    assert_eq!(
        text(RegionWriteMulti::decode(&wm)),
        "REGION_WRITE_MULTI: write count 9"
    );
    wm[0..8].copy_from_slice(&2u64.to_ne_bytes());
    assert_eq!(
        text(RegionWriteMulti::decode(&wm)),
        "REGION_WRITE_MULTI: payload length 32 does not match the expected 56"
    );
    let (mut io, _) = RegionIoFdsReply::encode(0, &[], 16);
    io[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert_eq!(
        text(RegionIoFdsReply::decode(&io)),
        "DEVICE_GET_REGION_IO_FDS reply: payload length 16 does not match the expected 41943056"
    );
    let mut st = IrqStatsReply {
        argsz: 16,
        index: 0,
        start: 0,
        stats: vec![],
    }
    .encode();
    st[12..16].copy_from_slice(&1u32.to_ne_bytes());
    assert_eq!(
        text(IrqStatsReply::decode(&st)),
        "SIDECAR_GET_IRQ_STATS reply: payload length 16 does not match the expected 48"
    );
    let mut dd = DeviceDescReply::encode(b"{}", &[], 100);
    dd[8..12].copy_from_slice(&1u32.to_ne_bytes());
    assert_eq!(
        text(DeviceDescReply::decode(&dd)),
        "SIDECAR_GET_DEVICE_DESC reply: payload length 18 does not match the expected 19"
    );
    let info = RegionInfo {
        index: 0,
        flags: 0,
        size: 0x1000,
        offset: 0,
        sparse: Some(vec![SparseArea {
            offset: 0,
            size: 0x1000,
        }]),
    };
    let good = info.encode_reply(1000);
    let mut huge = good.clone();
    huge[40..44].copy_from_slice(&2u32.to_ne_bytes());
    assert_eq!(
        text(RegionInfo::decode_reply(&huge)),
        "DEVICE_GET_REGION_INFO reply: payload too short (need 80 bytes, have 64)"
    );
    let mut version = good.clone();
    version[34..36].copy_from_slice(&2u16.to_ne_bytes());
    assert_eq!(
        text(RegionInfo::decode_reply(&version)),
        "DEVICE_GET_REGION_INFO reply: sparse mmap capability version"
    );
    let mut beyond = good;
    beyond[36..40].copy_from_slice(&100u32.to_ne_bytes());
    assert_eq!(
        text(RegionInfo::decode_reply(&beyond)),
        "DEVICE_GET_REGION_INFO reply: capability offset beyond payload"
    );
    let set = SetIrqs::new(0, IrqAction::Mask, IrqDataType::Bool, 0, 2, vec![true]);
    assert_eq!(
        text(set.is_valid(0)),
        "DEVICE_SET_IRQS: payload length 21 does not match the expected 22"
    );
    assert_eq!(
        text(set.is_valid(1)),
        "DEVICE_SET_IRQS: expected 0 file descriptors, got 1"
    );
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

#[test]
fn wire_layouts() {
    // Host-endian fields at their `<linux/vfio.h>` offsets, pads zero.
    let sub = SubRegionIoFd {
        offset: 0x1111,
        size: 0x2222,
        fd_index: 3,
        kind: IO_FD_TYPE_IOREGIONFD,
        flags: 5,
        data: 0x6666,
    };
    let (b, _) = RegionIoFdsReply::encode(7, &[sub], 1000);
    let mut want = u32s(&[56, 0, 7, 1]);
    want.extend_from_slice(&0x1111u64.to_ne_bytes());
    want.extend_from_slice(&0x2222u64.to_ne_bytes());
    want.extend_from_slice(&u32s(&[3, IO_FD_TYPE_IOREGIONFD, 5, 0]));
    want.extend_from_slice(&0x6666u64.to_ne_bytes());
    assert_eq!(b, want);
    // Region info request: argsz and index, the rest zero.
    let rq = RegionInfoRequest {
        argsz: 0x40,
        index: 2,
    }
    .encode();
    assert_eq!(rq, u32s(&[0x40, 0, 2, 0, 0, 0, 0, 0]));
    // One write of REGION_WRITE_MULTI.
    let wm = RegionWriteMulti {
        writes: vec![WriteOne {
            offset: 0x10,
            region: 1,
            count: 2,
            data: [0xa, 0xb, 0, 0, 0, 0, 0, 0],
        }],
    }
    .encode();
    let mut want = 1u64.to_ne_bytes().to_vec();
    want.extend_from_slice(&0x10u64.to_ne_bytes());
    want.extend_from_slice(&u32s(&[1, 2]));
    want.extend_from_slice(&[0xa, 0xb, 0, 0, 0, 0, 0, 0]);
    assert_eq!(wm, want);
    // Device description reply too small for the client: lengths 0.
    let d = DeviceDescReply::encode(b"{}", &[1], 16);
    assert_eq!(d, u32s(&[19, 0, 0, 0]));
}
