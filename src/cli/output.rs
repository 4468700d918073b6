//! Printing results: human text by default, JSON with `--json`.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;

use tapir::device::ChangerInventory;
use tapir::format::label::{ts_text, uuid_text};
use tapir::format::manifest::{CaptureStatus, Captured, Firmware};
use tapir::format::meta::{CatalogEntry, EntryKind, END_COMPLETE};
use tapir::pipeline::list::{ListSource, Listing};
use tapir::pipeline::manifest::FoundManifest;
use tapir::pipeline::restore::RestoreSummary;
use tapir::pipeline::verify::VerifySummary;
use tapir::pipeline::volume::{Labelled, MamRecord};
use tapir::pipeline::writer::{WriteProgress, WriteSummary};

fn print_json(v: &impl serde::Serialize) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).expect("summaries serialise")
    );
}

/// Show a path from tape safely: control characters and invalid UTF-8 escaped.
pub fn display_path(p: &[u8]) -> String {
    let mut out = String::with_capacity(p.len());
    for chunk in p.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

pub fn library_created(json: bool, dir: &Path, inv: &ChangerInventory, capacity: u64) {
    if json {
        print_json(&json!({"library": dir, "capacity": capacity, "inventory": inv}));
        return;
    }
    outln!(
        "created virtual library {} with {} cartridges of {} bytes",
        dir.display(),
        inv.slots.len(),
        capacity
    );
    changer_status(false, inv);
    outln!("use it with: --device vtape:{}", dir.display());
}

pub fn drives(json: bool, drives: &[tapir::device::discover::DriveInfo]) {
    if json {
        print_json(&drives);
        return;
    }
    if drives.is_empty() {
        outln!("no tape drives found (no st devices in /sys/class/scsi_tape)");
    }
    for d in drives {
        outln!(
            "{}  {} {} {}  serial {}{}",
            d.preferred_path().display(),
            d.vendor,
            d.model,
            d.revision,
            d.serial.as_deref().unwrap_or("unknown"),
            d.sg.as_ref()
                .map(|p| format!("  (SCSI generic {})", p.display()))
                .unwrap_or_default()
        );
    }
}

pub fn changer_status(json: bool, inv: &ChangerInventory) {
    if json {
        print_json(inv);
        return;
    }
    match &inv.drive {
        Some((barcode, slot)) => outln!("drive:   {barcode} (from slot {slot})"),
        None => outln!("drive:   empty"),
    }
    for (slot, barcode) in &inv.slots {
        outln!("slot {slot:>2}: {}", barcode.as_deref().unwrap_or("empty"));
    }
}

pub fn labelled(json: bool, l: &Labelled) {
    if json {
        print_json(l);
        return;
    }
    if let Some(what) = &l.destroyed {
        outln!("destroyed: {what}");
    }
    outln!(
        "labelled {} (pool {}, volume {}, block size {})",
        l.label,
        l.pool,
        l.volume_uuid,
        l.block_size
    );
    outln!("rescue kit: {}", kit_text(&l.rescue_kit));
    match l.cartridge_memory {
        MamRecord::Recorded => outln!("cartridge memory: label recorded"),
        MamRecord::NotSupported => {
            outln!("cartridge memory: not supported by this drive (the label is on the tape only)")
        }
        MamRecord::Failed => {
            outln!("cartridge memory: the drive refused it (the label is on the tape only)")
        }
    }
}

fn kit_text(kit: &tapir::pipeline::volume::KitSummary) -> String {
    match (&kit.binary, kit.format_spec) {
        (Some(b), _) => format!(
            "FORMAT.md and {} ({} bytes, BLAKE3 {}) from block {} of tape file 1",
            b.version, b.size, b.blake3, b.first_block
        ),
        (None, true) => "FORMAT.md; no tapir binary (give --rescue-binary PATH, or put a \
             tapir-static beside tapir; see scripts/build-static)"
            .to_string(),
        (None, false) => "left out".to_string(),
    }
}

/// Run a write with a live progress bar on a terminal (none otherwise).
pub fn with_write_progress<T>(json: bool, job: impl FnOnce(&WriteProgress) -> T) -> T {
    let progress = WriteProgress::default();
    // On a terminal a live line; otherwise a log line (shown with -v) now and then.
    let (bar, tick) = if !json && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("static template"),
        );
        (Some(bar), Duration::from_millis(250))
    } else {
        (None, Duration::from_secs(10))
    };
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let p = &progress;
        let b = bar.clone();
        s.spawn(move || {
            let mut last = 0u64;
            let started = std::time::Instant::now();
            // The tick is the display rate, not synchronisation.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                let written = p.bytes_written.load(Ordering::Relaxed);
                let now_rate = (written - last) as f64 / tick.as_secs_f64() / 1e6;
                last = written;
                let avg = written as f64 / started.elapsed().as_secs_f64().max(1e-3) / 1e6;
                let total = p.buffers_total.load(Ordering::Relaxed).max(1);
                let fill = p.buffers_in_flight.load(Ordering::Relaxed) * 100 / total;
                let state = if fill == 0 && written > 0 { "starved" } else { "streaming" };
                let current = p.current.lock().map(|c| c.clone()).unwrap_or_default();
                let line = format!(
                    "{} files, {:.1} MB, {now_rate:.0} MB/s (avg {avg:.0}), buffer {fill}%, drive {state}, underruns {} | {}",
                    p.files_done.load(Ordering::Relaxed),
                    written as f64 / 1e6,
                    p.underruns.load(Ordering::Relaxed),
                    display_path(current.as_bytes())
                );
                match &b {
                    Some(b) => {
                        b.set_message(line);
                        b.tick();
                    }
                    None => tracing::info!("{line}"),
                }
            }
        });
        let out = job(&progress);
        let _ = stop.send(());
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        out
    })
}

/// Copy stdin to `file` through a simulated drive; return what it went through.
pub fn sink(
    file: &Path,
    cfg: tapir::device::drivesim::DriveSimConfig,
    block: usize,
) -> anyhow::Result<tapir::device::drivesim::StreamingStats> {
    use std::io::{Read, Write};
    let mut sim = tapir::device::drivesim::DriveSim::new(cfg);
    let mut out = std::fs::File::create(file)?;
    let mut input = std::io::stdin().lock();
    let mut buf = vec![0u8; block.max(1)];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        out.write_all(&buf[..filled])?;
        sim.write(filled);
    }
    // End of the job: the last data goes to tape; not a backhitch.
    Ok(sim.stats())
}

pub fn written(json: bool, s: &WriteSummary) {
    if json {
        print_json(s);
        return;
    }
    outln!(
        "session {} written to {} (set \"{}\"{}): tape files {} and {}",
        s.session,
        s.cartridge,
        s.set_name,
        if s.new_set { ", new set" } else { "" },
        s.data_tape_file,
        s.catalog_tape_file
    );
    if s.parts.len() > 1 {
        outln!("  spans {} cartridges:", s.parts.len());
        for p in &s.parts {
            outln!(
                "    volume {} {}: session {}, tape file {}, {} entries{}",
                p.volume_seq,
                p.cartridge,
                p.session,
                p.data_tape_file,
                p.entries,
                if p.continues { ", full" } else { "" }
            );
        }
    }
    outln!(
        "  {} entries ({} files, {} directories, {} other), {} bytes read, {} stored, {} written in {} blocks",
        s.entries, s.files, s.directories, s.other_entries, s.bytes_read, s.bytes_stored, s.bytes_written, s.blocks_written
    );
    outln!(
        "  {:.2} s, {:.1} MB/s, drive waited {:.2} s, {} underruns, buffer fill {:.0}% average, compression {:.2}:1, {} checkpoints",
        s.seconds,
        s.throughput_mb_s,
        s.drive_wait_seconds,
        s.underruns,
        s.average_buffer_fill_percent,
        s.compression_ratio,
        s.checkpoints
    );
    if let Some(d) = &s.drive_streaming {
        outln!(
            "  drive: {} backhitches ({} after flushes), {:.1} s lost repositioning, host waited {:.2} s for the drive",
            d.backhitches, d.flush_backhitches, d.time_lost_seconds, d.host_wait_seconds
        );
    }
    if let Some(sp) = &s.spool {
        match (sp.used, sp.measured_source_mb_s) {
            (true, Some(r)) => outln!(
                "  spool: switched on (source {r:.0} MB/s); {} bytes through {} spool file(s)",
                sp.spooled_bytes,
                sp.spool_files
            ),
            (true, None) => outln!(
                "  spool: {} bytes through {} spool file(s)",
                sp.spooled_bytes,
                sp.spool_files
            ),
            (false, r) => outln!("  spool: not needed (source {:.0} MB/s)", r.unwrap_or(0.0)),
        }
    }
    if s.skipped_sockets > 0 {
        outln!("  {} sockets ignored (as tar does)", s.skipped_sockets);
    }
    for w in &s.warnings {
        outln!("  warning: {w}");
    }
    if s.interrupted {
        outln!("INTERRUPTED: the session was closed early with its catalog; what it lists is restorable, the rest was not written");
    } else if !s.warnings.is_empty() {
        outln!("completed with {} warning(s)", s.warnings.len());
    }
}

fn mode_string(kind: Option<EntryKind>, mode: u32) -> String {
    let t = match kind {
        Some(EntryKind::HardLink) => 'h',
        Some(k) => k.type_char(),
        None => '?',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        let set = mode & bit != 0;
        s.push(match (special, set, i) {
            (true, true, 8) => 't',
            (true, false, 8) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => *c,
            (false, false, _) => '-',
        });
    }
    s
}

fn entry_line(e: &CatalogEntry) -> String {
    let kind = EntryKind::from_code(e.kind).ok();
    let owner = format!(
        "{}/{}",
        e.user.clone().unwrap_or_else(|| e.uid.to_string()),
        e.group.clone().unwrap_or_else(|| e.gid.to_string())
    );
    let size = match (kind, e.device) {
        (Some(EntryKind::CharDevice | EntryKind::BlockDevice), Some(d)) => {
            format!("{},{}", d.major, d.minor)
        }
        _ => e.size.to_string(),
    };
    let when = jiff::Timestamp::new(e.mtime.sec, e.mtime.nsec as i32)
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|_| e.mtime.sec.to_string());
    let mut line = format!(
        "{} {:<17} {:>12} {} {}",
        mode_string(kind, e.mode),
        owner,
        size,
        when,
        display_path(&e.path)
    );
    match (kind, &e.link_target) {
        (Some(EntryKind::Symlink), Some(t)) => line.push_str(&format!(" -> {}", display_path(t))),
        (Some(EntryKind::HardLink), Some(t)) => {
            line.push_str(&format!(" link to {}", display_path(t)))
        }
        _ => {}
    }
    if let Some(from) = e.continued_from {
        line.push_str(&format!(
            "  [continued from the previous cartridge at byte {from}]"
        ));
    }
    if e.status == tapir::format::meta::END_CONTINUES {
        line.push_str("  [continues on the next cartridge]");
    } else if e.status != END_COMPLETE {
        line.push_str("  [incomplete at source]");
    }
    line
}

pub fn listing(json: bool, l: &Listing) {
    let label = &l.map.label;
    if json {
        let sessions: Vec<_> = l
            .sessions
            .iter()
            .map(|s| {
                json!({
                    "session": s.session.number,
                    "data_tape_file": s.session.data_file,
                    "catalog_tape_file": s.session.catalog_file,
                    "closed": s.closed,
                    "source": s.source,
                    "host": s.session.start.as_ref().map(|st| st.host.clone()),
                    "started": s.session.start.as_ref().map(|st| ts_text(st.started)),
                    "entries": s.entries.iter().map(|e| json!({
                        "path": display_path(&e.path),
                        "kind": EntryKind::from_code(e.kind).map(|k| format!("{k:?}")).unwrap_or_else(|_| e.kind.to_string()),
                        "mode": format!("{:o}", e.mode),
                        "uid": e.uid, "gid": e.gid, "user": e.user, "group": e.group,
                        "size": e.size,
                        "mtime": ts_text(e.mtime),
                        "link_target": e.link_target.as_deref().map(display_path),
                        "blake3": e.blake3.map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>()),
                        "position": {"tape_file": e.position.tape_file, "block": e.position.block, "offset": e.position.offset},
                        "complete_at_source": e.status == END_COMPLETE,
                    })).collect::<Vec<_>>(),
                    "incomplete": s.incomplete.iter().map(|(p, r)| json!({"path": display_path(p), "reason": r})).collect::<Vec<_>>(),
                    "lost_blocks": s.lost,
                })
            })
            .collect();
        print_json(&json!({
            "label": label.label,
            "volume_uuid": uuid_text(&label.volume_uuid),
            "pool": label.pool,
            "set": label.set.as_ref().map(|m| json!({"name": m.set_name, "uuid": uuid_text(&m.set_uuid), "volume": m.volume_seq})),
            "block_size": label.block_size,
            "sessions": sessions,
            "unknown_tape_files": l.map.unknown_files.iter().map(|(f, w)| json!({"tape_file": f, "what": w})).collect::<Vec<_>>(),
        }));
        return;
    }
    let set = match &label.set {
        Some(m) => format!("set \"{}\" volume {}", m.set_name, m.volume_seq),
        None => "no set".into(),
    };
    outln!(
        "cartridge {} ({}), pool {}, {}, block size {}",
        label.label,
        uuid_text(&label.volume_uuid),
        label.pool,
        set,
        label.block_size
    );
    if l.sessions.is_empty() {
        outln!("no sessions");
    }
    for s in &l.sessions {
        let (host, started) = s
            .session
            .start
            .as_ref()
            .map(|st| (st.host.clone(), ts_text(st.started)))
            .unwrap_or_else(|| ("?".into(), "?".into()));
        outln!(
            "== session {} (tape file {}) written {} on {}: {} entries{}{}",
            s.session.number,
            s.session.data_file,
            started,
            host,
            s.entries.len(),
            if s.source == ListSource::Scan {
                ", listed by scanning the data"
            } else {
                ""
            },
            if s.closed {
                ""
            } else {
                ", INTERRUPTED: no catalog"
            }
        );
        for e in &s.entries {
            outln!("{}", entry_line(e));
        }
        for (p, why) in &s.incomplete {
            outln!("!! incomplete: {} ({why})", display_path(p));
        }
        for lb in &s.lost {
            outln!(
                "!! tape file {} blocks {}..={} unreadable: {}",
                lb.tape_file,
                lb.first_block,
                lb.last_block,
                lb.reason
            );
        }
    }
    for (f, what) in &l.map.unknown_files {
        outln!("!! tape file {f}: {what}");
    }
}

pub fn restored(json: bool, s: &RestoreSummary) {
    if json {
        print_json(s);
        return;
    }
    outln!(
        "restored {} of {} selected entries ({} bytes) from {} into {}",
        s.restored,
        s.selected,
        s.bytes,
        s.cartridge,
        s.target
    );
    outln!(
        "  read {} blocks ({} bytes) with {} positioning operation(s) in {:.2} s",
        s.blocks_read,
        s.bytes_read,
        s.seeks,
        s.seconds
    );
    if s.catalog_bytes_read > 0 {
        outln!(
            "  found in the set catalog copy's index and pages: {} blocks ({} bytes) read",
            s.catalog_blocks_read,
            s.catalog_bytes_read
        );
    }
    for p in &s.skipped_existing {
        outln!("  skipped (exists; --overwrite replaces): {p}");
    }
    for d in &s.refused {
        outln!("  REFUSED {} (session {}): {}", d.path, d.session, d.reason);
    }
    for d in &s.damaged {
        outln!(
            "  NOT RESTORED {} (session {}): {}",
            d.path,
            d.session,
            d.reason
        );
    }
    for d in &s.failed {
        outln!("  FAILED {} (session {}): {}", d.path, d.session, d.reason);
    }
    if s.joined > 0 {
        outln!(
            "  {} file(s) spanning cartridges completed from their parts (BLAKE3 checked)",
            s.joined
        );
    }
    for d in &s.spanning {
        outln!(
            "  INCOMPLETE {} (session {}): {}",
            d.path,
            d.session,
            d.reason
        );
    }
    for lb in &s.lost_blocks {
        outln!(
            "  bad blocks: tape file {} blocks {}..={}: {}",
            lb.tape_file,
            lb.first_block,
            lb.last_block,
            lb.reason
        );
    }
    for p in &s.patterns_without_match {
        outln!("  pattern matched nothing: {p}");
    }
    for w in &s.warnings {
        outln!("  warning: {w}");
    }
    let status = s.exit_status();
    if status != tapir::exit::ExitStatus::Success {
        outln!(
            "restore incomplete: see above (exit status {})",
            status.code()
        );
    }
}

pub fn set_restored(json: bool, s: &tapir::pipeline::setrestore::SetRestoreSummary) {
    if json {
        print_json(s);
        return;
    }
    for c in &s.cartridges {
        restored(false, c);
    }
    outln!(
        "set \"{}\": restored {} of {} selected entries from {} cartridge(s), {} joined from parts",
        s.set_name,
        s.restored,
        s.selected,
        s.cartridges.len(),
        s.joined
    );
    for i in &s.incomplete {
        outln!("  INCOMPLETE {i}");
    }
}

pub fn verified(json: bool, s: &VerifySummary) {
    if json {
        print_json(s);
        return;
    }
    outln!(
        "verified {}: {} session(s), {} of {} entries intact, {} blocks ({} bytes) read, {} retries",
        s.cartridge, s.sessions, s.entries_ok, s.entries, s.blocks_read, s.bytes_read, s.retries
    );
    for b in &s.bad_blocks {
        outln!(
            "  BAD BLOCKS session {} tape file {} blocks {}..={}: {}{}",
            b.session,
            b.blocks.tape_file,
            b.blocks.first_block,
            b.blocks.last_block,
            b.blocks.reason,
            if b.paths.is_empty() {
                String::new()
            } else {
                format!("; affects: {}", b.paths.join(", "))
            }
        );
    }
    for d in &s.damaged {
        outln!("  DAMAGED {} (session {}): {}", d.path, d.session, d.reason);
    }
    for p in &s.problems {
        outln!("  problem: {p}");
    }
    for p in &s.spanning_parts {
        outln!("  PART ONLY {p}: its whole BLAKE3 needs every cartridge it is on");
    }
    for p in &s.incomplete_at_source {
        outln!("  note: {p} was archived incomplete (source unreadable at write time)");
    }
    match s.exit_status() {
        tapir::exit::ExitStatus::Success => outln!("all data verified"),
        st => outln!(
            "verification FAILED or incomplete (exit status {})",
            st.code()
        ),
    }
}

/// The system manifest: a summary a rescuer reads, then the raw captures
/// the runbook feeds back to the tools.
pub fn manifest(json: bool, found: &FoundManifest) {
    if json {
        print_json(found);
        return;
    }
    let m = &found.manifest;
    let status = |c: &Captured| match c.status {
        CaptureStatus::Ok => "recorded".to_string(),
        CaptureStatus::NotAvailable => format!("not available ({} is not installed)", c.command[0]),
        CaptureStatus::Failed => format!("failed: {}", c.stderr.trim()),
    };
    let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    outln!(
        "System manifest of {} (cartridge {}, session {}), gathered {} by {}",
        m.hostname,
        found.cartridge,
        found.session,
        m.created,
        m.written_by
    );
    outln!(
        "Kernel:     {} {} ({})",
        m.kernel.release,
        m.kernel.machine,
        m.kernel.version
    );
    if let Some(c) = &m.kernel.cmdline {
        outln!("Cmdline:    {c}");
    }
    let firmware = match m.boot.firmware {
        Firmware::Uefi => "UEFI",
        Firmware::Bios => "BIOS",
    };
    let loaders = if m.boot.loaders.is_empty() {
        "none found".to_string()
    } else {
        m.boot.loaders.join(", ")
    };
    outln!("Boot:       {firmware}; loader: {loaders}");
    if !m.boot.efi_directories.is_empty() {
        outln!("EFI dirs:   {}", m.boot.efi_directories.join(", "));
    }
    outln!("\nDisks:");
    for d in &m.disks {
        outln!(
            "  {} {} bytes{}: partition table {}",
            d.path,
            d.size_bytes,
            d.model
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            status(&d.partition_table)
        );
    }
    outln!("\nFilesystems (mounted):");
    for f in &m.filesystems {
        outln!(
            "  {:<20} {:<24} {:<8} UUID={} LABEL={} options={}",
            f.mount_point,
            f.source,
            f.fstype,
            or_dash(&f.uuid),
            or_dash(&f.label),
            f.mount_options
        );
    }
    outln!("\nBlock devices ({}):", status(&m.block_devices.blkid));
    for d in &m.block_devices.devices {
        outln!(
            "  {:<24} TYPE={} UUID={} LABEL={} PARTUUID={}",
            d.devname,
            or_dash(&d.fstype),
            or_dash(&d.uuid),
            or_dash(&d.label),
            or_dash(&d.partuuid)
        );
    }
    outln!("\nLVM: {}", status(&m.lvm.fullreport));
    for b in &m.lvm.vg_backups {
        outln!(
            "  volume group {} (tapir manifest show --vgcfg {})",
            b.name,
            b.name
        );
    }
    outln!("RAID: {}", status(&m.raid.mdadm_scan));
    let arrays = m.raid.mdadm_scan.stdout.trim();
    if !arrays.is_empty() {
        outln!("  {}", arrays.replace('\n', "\n  "));
    }
    outln!("LUKS: {} device(s)", m.luks.len());
    for l in &m.luks {
        outln!(
            "  {} UUID={}: header {}",
            l.device,
            or_dash(&l.uuid),
            status(&l.dump)
        );
    }
    for file in [&m.fstab, &m.crypttab, &m.swaps, &m.raid.mdstat] {
        if let Some(text) = &file.content {
            outln!("\n--- {} ---\n{}", file.path, text.trim_end());
        }
    }
    for d in &m.disks {
        if d.partition_table.status == CaptureStatus::Ok {
            outln!(
                "\n--- partition table of {} (tapir manifest show --sfdisk {}) ---\n{}",
                d.path,
                d.name,
                d.partition_table.stdout.trim_end()
            );
        }
    }
}
