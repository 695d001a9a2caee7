//! `probe --stats`: reads one snapshot from a `serve --stats-socket` and
//! prints it as text (session and process columns side by side), as the JSON
//! the server sent (`--json`), or as a Prometheus text exposition
//! (`--prometheus`; metric names in docs/operator-guide.md).

use std::fmt::Write as _;
use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::ProbeError;
use crate::stats::{Counters, Rw, Snapshot, SNAPSHOT_VERSION};

/// Largest snapshot accepted (the server's are a few KiB).
const MAX_DOC: u64 = 1 << 20;

/// How the snapshot is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text for people.
    Text,
    /// The JSON document as the server sent it (pretty-printed).
    Json,
    /// Prometheus text exposition format 0.0.4.
    Prometheus,
}

/// Connects to `path` and reads the snapshot (waits at most `secs` for it).
pub fn read_snapshot(path: &Path, secs: u64) -> Result<Snapshot, ProbeError> {
    let s = UnixStream::connect(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => ProbeError::NoSuchSocket(path.into()),
        ErrorKind::ConnectionRefused => ProbeError::Refused(path.into()),
        ErrorKind::PermissionDenied => ProbeError::PermissionDenied(path.into()),
        _ => ProbeError::StatsRead {
            path: path.into(),
            source: e,
        },
    })?;
    let read_err = |source| ProbeError::StatsRead {
        path: path.into(),
        source,
    };
    s.set_read_timeout(Some(Duration::from_secs(secs.max(1))))
        .map_err(read_err)?;
    let mut doc = Vec::new();
    match s.take(MAX_DOC).read_to_end(&mut doc) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Err(ProbeError::StatsFormat {
                path: path.into(),
                detail: format!("nothing within {} s", secs.max(1)),
            })
        }
        Err(e) => return Err(read_err(e)),
    }
    parse(path, &doc)
}

fn parse(path: &Path, doc: &[u8]) -> Result<Snapshot, ProbeError> {
    let bad = |detail: String| ProbeError::StatsFormat {
        path: path.into(),
        detail,
    };
    if doc.is_empty() {
        return Err(bad(
            "closed without a snapshot (refused by its --allow-uid/--allow-gid policy?)".into(),
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(doc).map_err(|e| bad(format!("not a JSON document ({e})")))?;
    let version = v.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(SNAPSHOT_VERSION)) {
        return Err(bad(format!(
            "snapshot version {} (this probe reads version {SNAPSHOT_VERSION})",
            version.map_or_else(|| "missing".to_string(), |n| n.to_string())
        )));
    }
    serde_json::from_value(v).map_err(|e| bad(format!("unexpected snapshot ({e})")))
}

/// Reads and prints the snapshot of `path` in `format`.
pub fn run(path: &Path, secs: u64, format: Format) -> Result<String, ProbeError> {
    let snap = read_snapshot(path, secs)?;
    Ok(match format {
        Format::Text => render_text(path, &snap),
        Format::Json => {
            let mut j = serde_json::to_string_pretty(&snap)
                .map_err(|e| ProbeError::Protocol(format!("JSON: {e}")))?;
            j.push('\n');
            j
        }
        Format::Prometheus => render_prometheus(&snap),
    })
}

/// Milliseconds as seconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn region_name(s: &Snapshot, region: u32) -> &str {
    s.regions.get(region as usize).map_or("?", String::as_str)
}

/// One table cell: "session / process" (just the process value without a
/// session).
fn cell(session: Option<u64>, total: u64) -> String {
    match session {
        Some(v) => format!("{v} / {total}"),
        None => total.to_string(),
    }
}

/// A table: a heading with column names, then labelled rows of cells.
fn table(out: &mut String, heading: &str, cols: &[&str], rows: &[(String, Vec<String>)]) {
    let _ = write!(out, "{heading:<24}");
    for c in cols {
        let _ = write!(out, " {c:>17}");
    }
    out.push('\n');
    for (label, cells) in rows {
        let _ = write!(out, "  {label:<22}");
        for c in cells {
            let _ = write!(out, " {c:>17}");
        }
        out.push('\n');
    }
}

fn rw_cells(sess: Option<Rw>, total: Rw) -> Vec<String> {
    vec![
        cell(sess.map(|r| r.reads), total.reads),
        cell(sess.map(|r| r.writes), total.writes),
        cell(sess.map(|r| r.read_bytes), total.read_bytes),
        cell(sess.map(|r| r.write_bytes), total.write_bytes),
    ]
}

/// Text: the session's and the process's counters side by side
/// ("session / process" in each cell while a client is connected).
pub fn render_text(path: &Path, s: &Snapshot) -> String {
    let mut out = String::new();
    let p = &s.process;
    let _ = writeln!(
        out,
        "statistics of {} (backend pid {}, device {}, profile {})",
        path.display(),
        p.pid,
        s.device,
        s.profile
    );
    let _ = writeln!(
        out,
        "process   up {:.1} s, {} client session(s), refused {} busy / {} by policy",
        secs(p.uptime_ms),
        p.sessions,
        p.refused_busy,
        p.refused_policy
    );
    let sess = s.session.as_ref();
    let _ = match sess {
        Some(v) => writeln!(
            out,
            "session   #{}: client pid {} uid {} gid {}, connected {:.1} s \
             (cells: session / process)",
            v.number,
            v.client.pid,
            v.client.uid,
            v.client.gid,
            secs(v.duration_ms)
        ),
        None => writeln!(out, "session   none: no client connected (cells: process)"),
    };
    let sc: Option<&Counters> = sess.map(|v| &v.counters);
    let t = &p.counters;
    let irqs: Vec<(String, Vec<String>)> = t
        .irqs
        .iter()
        .map(|r| {
            let m = sc.map(|c| {
                c.irqs
                    .iter()
                    .find(|x| x.index == r.index && x.vector == r.vector)
                    .copied()
                    .unwrap_or_default()
            });
            (
                format!("{}.{}", r.index, r.vector),
                vec![
                    cell(m.map(|x| x.device_events), r.device_events),
                    cell(m.map(|x| x.host_interrupts), r.host_interrupts),
                    cell(m.map(|x| x.unmasks), r.unmasks),
                    cell(m.map(|x| x.refires), r.refires),
                ],
            )
        })
        .collect();
    let cols = ["device events", "host interrupts", "unmasks", "refires"];
    table(&mut out, "IRQ index.vector", &cols, &irqs);
    let mut mmio: Vec<(String, Vec<String>)> = Vec::new();
    for r in &t.mmio {
        let m = sc.map(|c| {
            c.mmio
                .iter()
                .find(|x| x.region == r.region)
                .map(|x| x.rw)
                .unwrap_or_default()
        });
        let l = format!("region {} {}", r.region, region_name(s, r.region));
        mmio.push((l, rw_cells(m, r.rw)));
    }
    for r in &t.mmio_pages {
        let m = sc.map(|c| {
            c.mmio_pages
                .iter()
                .find(|x| x.region == r.region && x.offset == r.offset)
                .map(|x| x.rw)
                .unwrap_or_default()
        });
        mmio.push((
            format!("  page {}:{:#x}", r.region, r.offset),
            rw_cells(m, r.rw),
        ));
    }
    let o = t.mmio_other_pages;
    if o.reads + o.writes > 0 {
        mmio.push((
            "  other pages".into(),
            rw_cells(sc.map(|c| c.mmio_other_pages), o),
        ));
    }
    let cols = ["reads", "writes", "read bytes", "write bytes"];
    table(&mut out, "MMIO (trapped)", &cols, &mmio);
    let d = &t.dma;
    let sd = sc.map(|c| &c.dma);
    let dma = vec![(
        "device".to_string(),
        vec![
            cell(sd.map(|x| x.read_bytes.get()), d.read_bytes.get()),
            cell(sd.map(|x| x.write_bytes.get()), d.write_bytes.get()),
            cell(
                sd.map(|x| x.reads.get() + x.writes.get()),
                d.reads.get() + d.writes.get(),
            ),
            cell(sd.map(|x| x.faults.get()), d.faults.get()),
        ],
    )];
    table(
        &mut out,
        "DMA",
        &["read bytes", "write bytes", "accesses", "faults"],
        &dma,
    );
    let errors: Vec<(String, Vec<String>)> = t
        .errors
        .iter()
        .map(|e| {
            let m = sc.map(|c| {
                c.errors
                    .iter()
                    .find(|x| x.errno == e.errno)
                    .map_or(0, |x| x.count)
            });
            (e.name.clone(), vec![cell(m, e.count)])
        })
        .collect();
    table(&mut out, "error replies", &["count"], &errors);
    if errors.is_empty() {
        out.push_str("  none\n");
    }
    out
}

/// One Prometheus metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], v: impl std::fmt::Display) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.out, "{name} {v}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {v}", l.join(","));
        }
    }
}

/// Label value escaping of the text format (backslash, quote, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The counter sets of a snapshot with their `scope` label.
fn scopes(s: &Snapshot) -> Vec<(&'static str, &Counters)> {
    let mut v = Vec::new();
    if let Some(sess) = &s.session {
        v.push(("session", &sess.counters));
    }
    v.push(("process", &s.process.counters));
    v
}

fn counter_family<T>(
    out: &mut String,
    s: &Snapshot,
    name: &str,
    help: &str,
    rows: impl Fn(&Counters) -> Vec<(Vec<(&'static str, String)>, T)>,
) where
    T: std::fmt::Display,
{
    let mut f = Family::new(out, name, "counter", help);
    for (scope, c) in scopes(s) {
        for (mut labels, v) in rows(c) {
            labels.insert(0, ("scope", scope.to_string()));
            f.sample(name, &labels, v);
        }
    }
}

fn rw_samples(
    base: Vec<(&'static str, String)>,
    rw: &Rw,
    bytes: bool,
) -> Vec<(Vec<(&'static str, String)>, u64)> {
    let (r, w) = if bytes {
        (rw.read_bytes, rw.write_bytes)
    } else {
        (rw.reads, rw.writes)
    };
    let with = |op: &str| {
        let mut l = base.clone();
        l.push(("op", op.to_string()));
        l
    };
    vec![(with("read"), r), (with("write"), w)]
}

/// Prometheus text exposition (format 0.0.4). Every counter carries a
/// `scope` label: `session` (the connected client, from zero at connect) or
/// `process` (all sessions).
pub fn render_prometheus(s: &Snapshot) -> String {
    let mut out = String::new();
    let dev = [("device", s.device.clone()), ("profile", s.profile.clone())];
    let p = &s.process;
    let mut f = Family::new(
        &mut out,
        "vfio_sidecar_info",
        "gauge",
        "The served device (value 1).",
    );
    f.sample("vfio_sidecar_info", &dev, 1);
    let gauges: [(&str, &str, f64); 3] = [
        (
            "vfio_sidecar_start_time_seconds",
            "When the backend started (Unix time).",
            secs(p.since_unix_ms),
        ),
        (
            "vfio_sidecar_client_connected",
            "1 while a client is served.",
            f64::from(u8::from(s.session.is_some())),
        ),
        (
            "vfio_sidecar_session_start_time_seconds",
            "When the connected client was accepted (Unix time; 0 without one).",
            s.session
                .as_ref()
                .map_or(0.0, |v| secs(v.client.since_unix_ms)),
        ),
    ];
    for (name, help, v) in gauges {
        Family::new(&mut out, name, "gauge", help).sample(name, &[], v);
    }
    if let Some(v) = &s.session {
        let name = "vfio_sidecar_client_pid";
        Family::new(&mut out, name, "gauge", "Pid of the connected client.").sample(
            name,
            &[],
            v.client.pid,
        );
    }
    let name = "vfio_sidecar_sessions_total";
    Family::new(&mut out, name, "counter", "Client sessions started.").sample(
        name,
        &[],
        p.sessions,
    );
    let name = "vfio_sidecar_connections_refused_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Connections refused (busy: EBUSY, one client at a time; policy: --allow-uid/--allow-gid).",
    );
    f.sample(name, &[("reason", "busy".into())], p.refused_busy);
    f.sample(name, &[("reason", "policy".into())], p.refused_policy);
    let irq = |c: &Counters, pick: fn(&crate::stats::IrqRow) -> u64| {
        c.irqs
            .iter()
            .map(|r| {
                (
                    vec![
                        ("index", r.index.to_string()),
                        ("vector", r.vector.to_string()),
                    ],
                    pick(r),
                )
            })
            .collect::<Vec<_>>()
    };
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_irq_device_events_total",
        "Device interrupt events per vector.",
        |c| irq(c, |r| r.device_events),
    );
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_irq_host_interrupts_total",
        "Host interrupts (trigger eventfd signals) per vector.",
        |c| irq(c, |r| r.host_interrupts),
    );
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_irq_unmasks_total",
        "Unmasks (EOI) per vector.",
        |c| irq(c, |r| r.unmasks),
    );
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_irq_refires_total",
        "Unmasks that found the line still asserted and fired again.",
        |c| irq(c, |r| r.refires),
    );
    let region = |r: u32| {
        vec![
            ("region", r.to_string()),
            ("name", region_name(s, r).to_string()),
        ]
    };
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_mmio_accesses_total",
        "Trapped MMIO accesses per region.",
        |c| {
            c.mmio
                .iter()
                .flat_map(|r| rw_samples(region(r.region), &r.rw, false))
                .collect()
        },
    );
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_mmio_bytes_total",
        "Bytes of trapped MMIO accesses per region.",
        |c| {
            c.mmio
                .iter()
                .flat_map(|r| rw_samples(region(r.region), &r.rw, true))
                .collect()
        },
    );
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_mmio_page_accesses_total",
        "Trapped MMIO accesses per 4 KiB page (page=\"other\": pages beyond the tracked ones).",
        |c| {
            let mut v: Vec<_> = c
                .mmio_pages
                .iter()
                .flat_map(|r| {
                    let mut l = region(r.region);
                    l.push(("page", format!("{:#x}", r.offset)));
                    rw_samples(l, &r.rw, false)
                })
                .collect();
            let o = &c.mmio_other_pages;
            if o.reads + o.writes > 0 {
                v.extend(rw_samples(vec![("page", "other".into())], o, false));
            }
            v
        },
    );
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_dma_bytes_total",
        "Bytes the device read or wrote by DMA (models).",
        |c| {
            vec![
                (vec![("op", "read".into())], c.dma.read_bytes.get()),
                (vec![("op", "write".into())], c.dma.write_bytes.get()),
            ]
        },
    );
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_dma_accesses_total",
        "DMA accesses the device completed (models).",
        |c| {
            vec![
                (vec![("op", "read".into())], c.dma.reads.get()),
                (vec![("op", "write".into())], c.dma.writes.get()),
            ]
        },
    );
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_dma_faults_total",
        "DMA accesses that faulted (unmapped, not permitted, not served).",
        |c| vec![(Vec::new(), c.dma.faults.get())],
    );
    counter_family(
        &mut out,
        s,
        "vfio_sidecar_errors_total",
        "Error replies sent to the client, by errno.",
        |c| {
            c.errors
                .iter()
                .map(|e| (vec![("errno", e.name.clone())], e.count))
                .collect()
        },
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stats::{SnapshotAbout, Stats};

    fn snapshot() -> Snapshot {
        let dev = crate::model::create(&"scratch".parse().unwrap(), false).unwrap();
        let mut st = Stats::default();
        st.session_started(
            &dev,
            &crate::sandbox::PeerCred {
                pid: 42,
                uid: 0,
                gid: 0,
            },
        );
        st.mmio(0, 0x10, 4, false);
        st.set_errors(&std::collections::BTreeMap::from([(libc::EINVAL, 3)]));
        st.snapshot(
            &dev,
            SnapshotAbout {
                device: "model:scratch".into(),
                profile: "scratch".into(),
                regions: vec!["regs\"x".into()],
            },
        )
    }

    #[test]
    fn prometheus_exposition_is_well_formed() {
        let text = render_prometheus(&snapshot());
        assert!(text.contains(
            "vfio_sidecar_mmio_accesses_total{scope=\"session\",region=\"0\",name=\"regs\\\"x\",op=\"read\"} 1"
        ), "{text}");
        assert!(text.contains("vfio_sidecar_errors_total{scope=\"process\",errno=\"EINVAL\"} 3"));
        assert!(text.contains("vfio_sidecar_client_pid 42"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let metric = name.split('{').next().unwrap();
            assert!(metric.starts_with("vfio_sidecar_"), "{line}");
            assert!(
                text.contains(&format!("# TYPE {metric} ")),
                "no TYPE for {metric}"
            );
        }
    }

    #[test]
    fn text_shows_session_beside_process() {
        let text = render_text(Path::new("/x"), &snapshot());
        assert!(text.contains("session   #1: client pid 42"), "{text}");
        let l = text.lines().find(|l| l.contains("EINVAL")).unwrap();
        assert_eq!(
            l.split_whitespace().collect::<Vec<_>>(),
            ["EINVAL", "3", "/", "3"]
        );
        let l = text.lines().find(|l| l.contains("region 0")).unwrap();
        assert!(l.contains("1 / 1"), "{l}");
    }

    #[test]
    fn bad_documents_are_errors() {
        let p = Path::new("/s");
        for (doc, want) in [
            (&b""[..], "closed without a snapshot"),
            (b"{\"version\": 1, \"dev", "not a JSON document"),
            (b"{\"version\": 9}", "snapshot version 9"),
            (b"{\"version\": 1}", "unexpected snapshot"),
        ] {
            let e = parse(p, doc).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let good = crate::stats::encode(&snapshot());
        assert_eq!(parse(p, &good).unwrap(), snapshot_without_times(&good));
    }

    fn snapshot_without_times(doc: &[u8]) -> Snapshot {
        serde_json::from_slice(doc).unwrap()
    }
}
