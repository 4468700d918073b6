//! The st backend against a real Linux st driver.
//!
//! These tests need a tape drive they may overwrite, named by the
//! environment variable `TAPIR_TEST_ST_DEVICE` (e.g. `/dev/nst0`). Without
//! it every test passes at once, doing nothing. `scripts/vm/run-tests` runs
//! them in a virtual machine against the kernel's scsi_debug tape
//! (`scsi_debug ptype=1`): 10,000 blocks, early warning near block 9,980,
//! block sizes 512 B to 1 MiB, and only the first 4 bytes of each block kept.
//! So blocks are told apart by a 4-byte tag at their start.
//!
//! The tests share one cartridge and must run one at a time, in name order
//! (`--test-threads=1`); each starts by rewinding and writing what it needs.
//!
//! The same tests run against tgt's tape emulation over iSCSI (byte-exact,
//! but without READ POSITION, LOCATE or residues, and with a made-up block at
//! end of data); checks that need what tgt lacks are skipped there, saying so.
//!
//! Resets are real: a LOGICAL UNIT RESET through the drive's SCSI generic
//! node (SG_SCSI_RESET), after which both emulators raise UNIT ATTENTION
//! (29h). Failed writes come from scsi_debug's error injection in debugfs
//! (`/sys/kernel/debug/scsi_debug/H:C:T:L/error`); it builds current
//! (70h) sense only, so a deferred error (71h) cannot be produced here.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tapir::device::sense::UnitAttention;
use tapir::device::sg::SgError;
use tapir::device::st::{StDrive, LOGICAL_UNKNOWN};
use tapir::device::{
    BlockRead, BlockWrite, DeviceError, ReadOutcome, TapeDrive, TapePosition, WriteOutcome,
};

const ENV: &str = "TAPIR_TEST_ST_DEVICE";

fn device() -> Option<String> {
    let d = std::env::var(ENV).ok().filter(|d| !d.is_empty());
    if d.is_none() {
        eprintln!("{ENV} is not set: skipped (scripts/vm/run-tests runs this in a VM)");
    }
    d
}

fn open(dev: &str) -> StDrive {
    StDrive::open(dev, dev).unwrap_or_else(|e| panic!("opening {dev}: {e}"))
}

/// Which emulation is behind the device, from INQUIRY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emulation {
    /// The kernel's scsi_debug: keeps 4 bytes of each block.
    ScsiDebug,
    /// tgt's ssc backing store: byte-exact, no READ POSITION or LOCATE.
    Tgt,
    /// A real drive (or anything else): everything applies.
    Other,
}

fn emulation(d: &StDrive) -> Emulation {
    match d.scsi().inquiry() {
        Ok(i) if i.product == "scsi_debug" => Emulation::ScsiDebug,
        Ok(i) if i.vendor == "IET" && i.product.starts_with("VIRTUAL-TAPE") => Emulation::Tgt,
        _ => Emulation::Other,
    }
}

/// True (and says so) when the drive behind `d` is tgt, which lacks what
/// the rest of the test needs.
fn not_on_tgt(d: &StDrive, why: &str) -> bool {
    let tgt = emulation(d) == Emulation::Tgt;
    if tgt {
        eprintln!("skipped on tgt: {why}");
    }
    tgt
}

/// A block of `len` bytes whose first 4 bytes are `tag`.
fn block(tag: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0xA5u8; len];
    b[..4].copy_from_slice(&tag.to_be_bytes());
    b
}

fn tag(buf: &[u8]) -> u32 {
    u32::from_be_bytes(buf[..4].try_into().unwrap())
}

fn pos(d: &mut StDrive) -> (u32, u64) {
    let p = d.position().unwrap();
    (p.file, p.block)
}

/// What reading on finds, as (tag, length) for blocks and markers.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    B(u32, usize),
    Fm,
    Eod,
}

fn read_one(d: &mut StDrive, buf: &mut [u8]) -> Seen {
    match d.read_block(buf).unwrap() {
        ReadOutcome::Block(n) => Seen::B(tag(buf), n),
        ReadOutcome::Filemark => Seen::Fm,
        ReadOutcome::EndOfData => Seen::Eod,
    }
}

fn read_to_eod(d: &mut StDrive) -> Vec<Seen> {
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    loop {
        let s = read_one(d, &mut buf);
        let end = s == Seen::Eod;
        out.push(s);
        if end || out.len() > 100 {
            return out;
        }
    }
}

/// Three tape files: (tag 0x100.., 3 blocks) FM (0x200.., 2 blocks) FM
/// (0x300.., 3 blocks) FM, written from BOT.
fn three_files(d: &mut StDrive) {
    d.rewind().unwrap();
    for (f, n) in [(1u32, 3u32), (2, 2), (3, 3)] {
        for b in 0..n {
            let len = 512 * (1 + b as usize);
            assert_eq!(
                d.write_block(&block(f << 8 | b, len)).unwrap(),
                WriteOutcome::Written
            );
        }
        d.write_filemarks(1, f != 3).unwrap();
    }
}

#[test]
fn t01_blank_tape_reads_as_end_of_data() {
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    d.rewind().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    // scsi_debug starts blank; reading it is end of data, twice.
    assert_eq!(read_one(&mut d, &mut buf), Seen::Eod);
    assert_eq!(read_one(&mut d, &mut buf), Seen::Eod);
    assert_eq!(pos(&mut d), (0, 0));
    d.seek_end_of_data().unwrap();
    assert_eq!(pos(&mut d), (0, 0));
    let s = d.status().unwrap();
    assert!(s.online && s.at_bot && !s.write_protected, "{s:?}");
    assert!(matches!(
        d.space_filemarks(1),
        Err(DeviceError::EndOfData {
            file: 0,
            block: 0,
            ..
        })
    ));
}

#[test]
fn t02_identity_limits_and_position_through_sg() {
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    d.rewind().unwrap();
    let scsi = d.scsi();
    let inq = scsi.inquiry().unwrap();
    eprintln!("INQUIRY: {inq:?}");
    assert_eq!(
        inq.peripheral_type,
        tapir::device::sg::PERIPHERAL_SEQUENTIAL
    );
    assert!(!inq.vendor.is_empty() && !inq.product.is_empty());
    match scsi.unit_serial_number() {
        Ok(s) => eprintln!("serial: {s}"),
        Err(e) => assert!(e.is_not_supported(), "{e}"),
    }
    let limits = scsi.read_block_limits().unwrap();
    eprintln!("READ BLOCK LIMITS: {limits:?}");
    assert!(limits.max >= 1 << 20 && limits.min >= 1, "{limits:?}");
    assert_eq!(d.max_block_size(), limits.max as usize);
    if not_on_tgt(&d, "no READ POSITION") {
        return;
    }
    let scsi = d.scsi();
    let p = scsi.read_position_short().unwrap();
    eprintln!("READ POSITION at BOT: {p:?}");
    // (scsi_debug leaves the BOP bit clear.)
    assert!(!p.position_unknown, "{p:?}");
    assert_eq!(p.first_object, 0);
    // Pages and commands scsi_debug lacks are "not supported", never errors.
    let optional: [(&str, Result<String, SgError>); 6] = [
        (
            "long READ POSITION",
            scsi.read_position_long().map(|p| format!("{p:?}")),
        ),
        ("compression", scsi.compression().map(|c| format!("{c:?}"))),
        (
            "medium configuration",
            scsi.medium_configuration().map(|c| format!("{c:?}")),
        ),
        ("TapeAlert", scsi.tape_alert().map(|t| format!("{t:?}"))),
        (
            "volume statistics",
            scsi.volume_statistics().map(|v| format!("{v:?}")),
        ),
        (
            "cartridge memory",
            scsi.read_attributes().map(|a| format!("{a:?}")),
        ),
    ];
    for (what, r) in optional {
        match r {
            Ok(v) => eprintln!("{what}: {v}"),
            Err(e) => assert!(e.is_not_supported(), "{what}: {e}"),
        }
    }
    match scsi.report_density_support(true) {
        Ok(v) => eprintln!("densities: {v:?}"),
        Err(e) => assert!(e.is_not_supported(), "densities: {e}"),
    }
    let mode = scsi.mode_sense(0x3F).unwrap();
    assert!(!mode.write_protected);
    // Neither emulator has a tape capacity log page or cartridge memory.
    let room = d.room_before_early_warning();
    eprintln!("room before early warning: {room:?}");
    if emulation(&d) == Emulation::ScsiDebug {
        assert_eq!(room, None);
    }
    // MTIOCPOS and READ POSITION agree.
    assert_eq!(d.tell().unwrap(), 0);
    assert_eq!(d.position().unwrap().logical, 0);
}

#[test]
fn t03_write_read_back_filemarks_and_end_of_data() {
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    three_files(&mut d);
    assert_eq!(pos(&mut d), (3, 0));
    let s = d.status().unwrap();
    assert!(!s.at_bot && !s.early_warning, "{s:?}");
    d.rewind().unwrap();
    use Seen::*;
    assert_eq!(
        read_to_eod(&mut d),
        vec![
            B(0x100, 512),
            B(0x101, 1024),
            B(0x102, 1536),
            Fm,
            B(0x200, 512),
            B(0x201, 1024),
            Fm,
            B(0x300, 512),
            B(0x301, 1024),
            B(0x302, 1536),
            Fm,
            Eod,
        ]
    );
    assert_eq!(pos(&mut d), (3, 0));
    // Reading again at end of data stays there.
    assert_eq!(read_to_eod(&mut d), vec![Eod]);
    assert_eq!(pos(&mut d), (3, 0));
    if emulation(&d) != Emulation::Tgt {
        let p = d.position().unwrap();
        assert_eq!(p.logical, 11, "8 blocks and 3 filemarks");
        assert_eq!(d.tell().unwrap(), 11);
    }
    // Large blocks: 1 MiB round-trips its size.
    d.seek_end_of_data().unwrap();
    assert_eq!(pos(&mut d), (3, 0));
    d.write_block(&block(0x400, 1 << 20)).unwrap();
    d.write_filemarks(1, false).unwrap();
    d.locate(3, 0).unwrap();
    assert_eq!(read_to_eod(&mut d), vec![B(0x400, 1 << 20), Fm, Eod]);
}

#[test]
fn t04_data_without_a_filemark_ends_in_end_of_data() {
    let Some(dev) = device() else { return };
    if not_on_tgt(
        &open(&dev),
        "no way to count the blocks of an unterminated file",
    ) {
        return;
    }
    let mut d = open(&dev);
    three_files(&mut d);
    // A fourth file with two blocks and no filemark: backward block spacing
    // after a write adds no filemark.
    d.write_block(&block(0x400, 512)).unwrap();
    d.write_block(&block(0x401, 512)).unwrap();
    assert_eq!(pos(&mut d), (3, 2));
    d.space_blocks(-2).unwrap();
    assert_eq!(pos(&mut d), (3, 0));
    use Seen::*;
    assert_eq!(read_to_eod(&mut d), vec![B(0x400, 512), B(0x401, 512), Eod]);
    assert_eq!(pos(&mut d), (3, 2));
    // End of data in the middle of a file, from BOT.
    d.rewind().unwrap();
    d.seek_end_of_data().unwrap();
    assert_eq!(pos(&mut d), (3, 2), "MTEOM into an unterminated file");
    assert!(d.status().unwrap().at_eod);
    // Forward file spacing into that end of data.
    d.locate(2, 1).unwrap();
    let e = d.space_filemarks(2).unwrap_err();
    assert!(
        matches!(
            e,
            DeviceError::EndOfData {
                file: 3,
                block: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(pos(&mut d), (3, 2));
    // Appending closes the file the way the writer does.
    d.write_filemarks(1, false).unwrap();
    assert_eq!(pos(&mut d), (4, 0));
    d.locate(3, 1).unwrap();
    assert_eq!(read_to_eod(&mut d), vec![B(0x401, 512), Fm, Eod]);
}

#[test]
fn t05_spacing_and_locate() {
    let Some(dev) = device() else { return };
    if not_on_tgt(
        &open(&dev),
        "block numbers after backward file spacing need READ POSITION",
    ) {
        return;
    }
    let mut d = open(&dev);
    three_files(&mut d);
    d.rewind().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    use Seen::*;
    d.space_filemarks(1).unwrap();
    assert_eq!(pos(&mut d), (1, 0));
    assert_eq!(read_one(&mut d, &mut buf), B(0x200, 512));
    d.space_filemarks(1).unwrap();
    assert_eq!(pos(&mut d), (2, 0));
    // Backward over one filemark: before it, at the end of file 1.
    d.space_filemarks(-1).unwrap();
    assert_eq!(pos(&mut d), (1, 2));
    assert_eq!(read_one(&mut d, &mut buf), Fm);
    assert_eq!(pos(&mut d), (2, 0));
    d.space_blocks(2).unwrap();
    assert_eq!(pos(&mut d), (2, 2));
    d.space_filemarks(-2).unwrap();
    assert_eq!(pos(&mut d), (0, 3));
    d.space_filemarks(2).unwrap();
    assert_eq!(pos(&mut d), (2, 0));
    // Blocks: forward past the end of a file stops before its filemark.
    d.rewind().unwrap();
    let e = d.space_blocks(5).unwrap_err();
    assert!(e.to_string().contains("filemark"), "{e}");
    assert_eq!(pos(&mut d), (0, 3));
    assert_eq!(read_one(&mut d, &mut buf), Fm);
    // Backward past the start of a file stops after its filemark.
    d.space_blocks(1).unwrap();
    assert_eq!(pos(&mut d), (1, 1));
    let e = d.space_blocks(-3).unwrap_err();
    assert!(e.to_string().contains("filemark"), "{e}");
    assert_eq!(pos(&mut d), (1, 0));
    assert_eq!(read_one(&mut d, &mut buf), B(0x200, 512));
    // Backward past BOT.
    d.locate(0, 1).unwrap();
    assert!(d.space_blocks(-2).is_err());
    assert_eq!(pos(&mut d), (0, 0));
    assert!(d.status().unwrap().at_bot);
    assert!(d.space_filemarks(-1).is_err());
    assert_eq!(pos(&mut d), (0, 0));
    // Forward into end of data.
    d.locate(2, 1).unwrap();
    assert!(matches!(
        d.space_filemarks(2),
        Err(DeviceError::EndOfData {
            file: 3,
            block: 0,
            ..
        })
    ));
    // Locate everywhere, from everywhere.
    for (f, b, expect) in [
        (2, 2, B(0x302, 1536)),
        (0, 0, B(0x100, 512)),
        (1, 1, B(0x201, 1024)),
        (0, 3, Fm),
        (2, 0, B(0x300, 512)),
        (1, 2, Fm),
        (1, 0, B(0x200, 512)),
        (3, 0, Eod),
        (0, 2, B(0x102, 1536)),
    ] {
        d.locate(f, b).unwrap();
        assert_eq!(pos(&mut d), (f, b), "locate {f}/{b}");
        assert_eq!(read_one(&mut d, &mut buf), expect, "locate {f}/{b}");
    }
    assert!(d.locate(5, 0).is_err());
    assert!(d.locate(1, 3).is_err());
    // The reader's retry: back one block and read again.
    d.locate(2, 1).unwrap();
    assert_eq!(read_one(&mut d, &mut buf), B(0x301, 1024));
    d.space_blocks(-1).unwrap();
    assert_eq!(read_one(&mut d, &mut buf), B(0x301, 1024));
    assert_eq!(pos(&mut d), (2, 2));
}

#[test]
fn t05b_backward_file_spacing_from_the_end_of_a_file() {
    // Right after a file's last block the filemark is next; tgt counts it
    // as crossed when spacing back over filemarks. Checked by reading, as
    // tgt reports no positions.
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    three_files(&mut d);
    d.rewind().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    use Seen::*;
    d.space_filemarks(2).unwrap();
    for b in 0..3u32 {
        assert_eq!(
            read_one(&mut d, &mut buf),
            B(0x300 | b, 512 * (1 + b as usize))
        );
    }
    d.space_filemarks(-2).unwrap();
    assert_eq!(read_one(&mut d, &mut buf), Fm);
    assert_eq!(read_one(&mut d, &mut buf), B(0x200, 512));
    assert_eq!(read_one(&mut d, &mut buf), B(0x201, 1024));
    // Locating an earlier file from the end of a file spaces back too.
    d.locate(0, 1).unwrap();
    assert_eq!(read_one(&mut d, &mut buf), B(0x101, 1024));
    d.locate(2, 2).unwrap();
    assert_eq!(read_one(&mut d, &mut buf), B(0x302, 1536));
    d.locate(1, 0).unwrap();
    assert_eq!(read_one(&mut d, &mut buf), B(0x200, 512));
}

#[test]
fn t06_block_larger_than_the_buffer() {
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    d.rewind().unwrap();
    d.write_block(&block(0x1, 8192)).unwrap();
    d.write_block(&block(0x2, 512)).unwrap();
    d.write_filemarks(1, false).unwrap();
    d.rewind().unwrap();
    let mut small = vec![0u8; 4096];
    match d.read_block(&mut small) {
        Err(DeviceError::BlockTooLarge {
            needed,
            buffer,
            file,
            block,
            ..
        }) => {
            assert_eq!((needed, buffer, file, block), (8192, 4096, 0, 0));
        }
        other => panic!("expected BlockTooLarge, got {other:?}"),
    }
    // The position moved past the block, as st does.
    assert_eq!(pos(&mut d), (0, 1));
    assert_eq!(read_one(&mut d, &mut small), Seen::B(0x2, 512));
    // Back over it and read it with a buffer that fits.
    d.space_blocks(-2).unwrap();
    let mut big = vec![0u8; 8192];
    assert_eq!(read_one(&mut d, &mut big), Seen::B(0x1, 8192));
}

#[test]
fn t07_implicit_filemark_on_close_and_rewind() {
    let Some(dev) = device() else { return };
    {
        let mut d = open(&dev);
        d.rewind().unwrap();
        d.write_block(&block(0x10, 512)).unwrap();
        // Dropped right after a write: st writes a filemark on close.
    }
    let mut d = open(&dev);
    assert_eq!(
        pos(&mut d),
        (1, 0),
        "the driver kept the position across opens"
    );
    d.write_block(&block(0x20, 512)).unwrap();
    d.rewind().unwrap(); // after a write: another filemark
    use Seen::*;
    assert_eq!(
        read_to_eod(&mut d),
        vec![B(0x10, 512), Fm, B(0x20, 512), Fm, Eod]
    );
    // Backward file spacing right after a write counts st's filemark.
    d.seek_end_of_data().unwrap();
    d.write_block(&block(0x30, 512)).unwrap();
    d.space_filemarks(-1).unwrap();
    if emulation(&d) != Emulation::Tgt {
        assert_eq!(pos(&mut d), (1, 1));
    }
    d.rewind().unwrap();
    assert_eq!(
        read_to_eod(&mut d),
        vec![B(0x10, 512), Fm, B(0x20, 512), Fm, B(0x30, 512), Fm, Eod]
    );
    // A write in the middle truncates what follows.
    d.locate(1, 0).unwrap();
    d.write_block(&block(0x21, 512)).unwrap();
    d.write_filemarks(1, false).unwrap();
    d.rewind().unwrap();
    assert_eq!(
        read_to_eod(&mut d),
        vec![B(0x10, 512), Fm, B(0x21, 512), Fm, Eod]
    );
    d.close().unwrap();
}

#[test]
fn t08_block_limits_are_enforced_before_the_drive() {
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    d.rewind().unwrap();
    let too_big = vec![0u8; d.max_block_size() + 1];
    assert!(matches!(
        d.write_block(&too_big),
        Err(DeviceError::InvalidRequest { .. })
    ));
    if d.min_block_size() > 1 {
        assert!(matches!(
            d.write_block(&[1, 2, 3]),
            Err(DeviceError::InvalidRequest { .. })
        ));
    }
    assert_eq!(pos(&mut d), (0, 0));
}

#[test]
fn t09_write_protected_cartridge() {
    let Some(dev) = device() else { return };
    // scsi_debug's write-protect switch; skip on other drives.
    let Some(wp) = [
        "/sys/bus/pseudo/drivers/scsi_debug/wp",
        "/sys/module/scsi_debug/parameters/wp",
    ]
    .iter()
    .map(std::path::Path::new)
    .find(|p| p.exists()) else {
        eprintln!("no scsi_debug write-protect switch: skipped");
        return;
    };
    std::fs::write(wp, "1").unwrap();
    let result = std::panic::catch_unwind(|| {
        let mut d = open(&dev);
        d.rewind().unwrap();
        let reported = d.scsi().mode_sense(0x3F).unwrap().write_protected;
        let write = d.write_block(&block(1, 512));
        if !reported || write.is_ok() {
            eprintln!(
                "this emulator ignores its write-protect switch (MODE SENSE WP {reported}, \
                 write {write:?}): skipped"
            );
            return;
        }
        d.rewind().unwrap();
        // st checks protection when a cartridge is loaded; flipping the
        // switch under a loaded cartridge shows up at the first write.
        let r = d.write_block(&block(1, 512));
        assert!(
            matches!(r, Err(DeviceError::WriteProtected { .. })),
            "{r:?}"
        );
        assert!(d.is_write_protected());
        assert!(d.status().unwrap().write_protected);
        assert!(matches!(
            d.write_filemarks(1, false),
            Err(DeviceError::WriteProtected { .. })
        ));
        // Reading still works.
        let mut buf = vec![0u8; 1 << 20];
        assert!(d.read_block(&mut buf).is_ok());
    });
    std::fs::write(wp, "0").unwrap();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn t10_early_warning_and_end_of_medium_lose_no_block() {
    let Some(dev) = device() else { return };
    if not_on_tgt(
        &open(&dev),
        "early warning sits at the image size (hundreds of MB)",
    ) {
        return;
    }
    let mut d = open(&dev);
    d.rewind().unwrap();
    d.write_block(&block(0xFFFF_0000, 512)).unwrap();
    d.write_filemarks(1, true).unwrap();
    // Write file 1 until early warning, close it with a filemark (which
    // must still fit), then fill file 2 until the medium is full.
    let mut written = [0u64; 2];
    let mut file = 0usize;
    let mut first_warning: Option<u64> = None;
    let end = loop {
        let tag = (file as u32 + 1) << 24 | written[file] as u32;
        match d.write_block(&block(tag, 512)) {
            Ok(WriteOutcome::Written) => {
                assert!(first_warning.is_none(), "Written after early warning");
                written[file] += 1;
            }
            Ok(WriteOutcome::EarlyWarning) => {
                written[file] += 1;
                if first_warning.is_none() {
                    first_warning = Some(written[0]);
                    assert!(d.status().unwrap().early_warning);
                    d.write_filemarks(1, true).unwrap();
                    assert_eq!(pos(&mut d), (2, 0));
                    file = 1;
                }
            }
            Err(e) => break e,
        }
        assert!(written[0] + written[1] < 20_000, "no end of medium");
    };
    eprintln!(
        "early warning after {first_warning:?} blocks of file 1; {} more blocks fit in file 2; \
         then: {end}",
        written[1]
    );
    let first_warning = first_warning.expect("early warning before the end");
    assert!(
        (9_000..10_000).contains(&first_warning),
        "early warning at {first_warning}"
    );
    assert!(
        matches!(end, DeviceError::EndOfMedium { file: 2, block, .. } if block == written[1]),
        "{end}"
    );
    // Every write that returned Ok is on tape, and nothing else: the
    // drive's own position agrees.
    let p = d.position().unwrap();
    assert_eq!((p.file, p.block), (2, written[1]));
    assert_eq!(d.tell().unwrap(), 3 + written[0] + written[1]);
    assert!(d.status().unwrap().early_warning);
    // Read both files back: tags in order, none missing or doubled.
    d.locate(1, 0).unwrap();
    let mut buf = vec![0u8; 4096];
    for (f, &count) in written.iter().enumerate() {
        for i in 0..count {
            match d.read_block(&mut buf).unwrap() {
                ReadOutcome::Block(512) => {
                    assert_eq!(
                        tag(&buf),
                        (f as u32 + 1) << 24 | i as u32,
                        "file {f} block {i}"
                    )
                }
                other => panic!("file {} block {i}: {other:?}", f + 1),
            }
        }
        let next = d.read_block(&mut buf).unwrap();
        if f == 0 {
            assert_eq!(next, ReadOutcome::Filemark);
        } else {
            assert_eq!(next, ReadOutcome::EndOfData);
        }
    }
    let p: TapePosition = d.position().unwrap();
    assert_eq!((p.file, p.block), (2, written[1]));
    assert_ne!(p.logical, LOGICAL_UNKNOWN);
}

#[test]
fn t11_open_when_ready_and_logical_seek() {
    let Some(dev) = device() else { return };
    let mut messages = Vec::new();
    let mut d = StDrive::open_when_ready(
        &dev,
        &dev,
        std::time::Duration::from_secs(30),
        &mut |m: &str| messages.push(m.to_string()),
    )
    .unwrap();
    assert!(
        messages.is_empty(),
        "a ready drive needs no wait: {messages:?}"
    );
    if not_on_tgt(&d, "no LOCATE") {
        return;
    }
    three_files(&mut d);
    // LOCATE by logical object: 3 blocks, a filemark, then file 1's blocks.
    d.seek_logical(5).unwrap();
    assert_eq!(d.tell().unwrap(), 5);
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(read_one(&mut d, &mut buf), Seen::B(0x201, 1024));
    assert_eq!(d.tell().unwrap(), 6);
    d.seek_logical(0).unwrap();
    assert_eq!(pos(&mut d), (0, 0));
    assert_eq!(read_one(&mut d, &mut buf), Seen::B(0x100, 512));
}

#[test]
fn t12_every_byte_comes_back() {
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    if emulation(&d) == Emulation::ScsiDebug {
        eprintln!("skipped on scsi_debug: it keeps 4 bytes of each block");
        return;
    }
    // Blocks of many sizes, up to the largest, with varied content.
    let sizes = [512usize, 1000, 4096, 65_536, 262_144, 1 << 20, 700_000, 4];
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut blocks = Vec::new();
    for &n in sizes
        .iter()
        .filter(|&&n| n >= d.min_block_size() && n <= d.max_block_size())
    {
        let b: Vec<u8> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        blocks.push(b);
    }
    d.rewind().unwrap();
    for b in &blocks {
        d.write_block(b).unwrap();
    }
    d.write_filemarks(1, false).unwrap();
    d.rewind().unwrap();
    // Read with a buffer of exactly each block's size (emulators are
    // touchy about buffers between 1x and 2x a block).
    for (i, b) in blocks.iter().enumerate() {
        let mut buf = vec![0u8; b.len()];
        assert_eq!(
            d.read_block(&mut buf).unwrap(),
            ReadOutcome::Block(b.len()),
            "block {i}"
        );
        assert!(buf == *b, "block {i} of {} bytes differs", b.len());
    }
    let mut buf = vec![0u8; d.max_block_size()];
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);
    assert_eq!(pos(&mut d), (1, 0));
}

// ---- LOCATE, resets and deferred errors ----

/// The st driver's sysfs directory for `dev` (/sys/class/scsi_tape/nstN).
fn sysfs_dir(dev: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(dev).unwrap().rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    std::fs::canonicalize(format!("/sys/dev/char/{major}:{minor}")).unwrap()
}

/// SCSI commands other than READ and WRITE the st driver has sent to the
/// drive (its statistics in sysfs), when it keeps them.
fn st_commands(dev: &str) -> Option<u64> {
    let v = std::fs::read_to_string(sysfs_dir(dev).join("stats/other_cnt")).ok()?;
    v.trim().parse().ok()
}

/// The drive's H:C:T:L address (the SCSI device above the st node).
fn scsi_address(dev: &str) -> String {
    let dir = sysfs_dir(dev);
    let device = dir.parent().and_then(Path::parent).unwrap();
    device.file_name().unwrap().to_string_lossy().into_owned()
}

nix::ioctl_write_ptr_bad!(sg_scsi_reset, 0x2284, libc::c_int);
/// `SG_SCSI_RESET_DEVICE` of <scsi/sg.h>.
const SG_SCSI_RESET_DEVICE: libc::c_int = 1;

/// Reset the drive (a LOGICAL UNIT RESET through its SCSI generic node),
/// as a bus reset or another initiator would. `false` if it cannot be done.
fn reset_drive(dev: &str) -> bool {
    let Some(sg) = std::fs::read_dir(sysfs_dir(dev).join("device/scsi_generic"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| PathBuf::from("/dev").join(e.file_name()))
    else {
        eprintln!("no SCSI generic node for {dev}");
        return false;
    };
    let f = match std::fs::OpenOptions::new().read(true).write(true).open(&sg) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("opening {}: {e}", sg.display());
            return false;
        }
    };
    // SAFETY: the fd is open for the call; the argument is a valid int
    // that SG_SCSI_RESET only reads.
    match unsafe { sg_scsi_reset(f.as_raw_fd(), &SG_SCSI_RESET_DEVICE) } {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SG_SCSI_RESET on {}: {e}", sg.display());
            false
        }
    }
}

fn is_unit_attention_reset(r: &Result<impl std::fmt::Debug, DeviceError>) -> bool {
    matches!(
        r,
        Err(DeviceError::UnitAttention {
            reason: UnitAttention::PowerOnOrReset,
            ..
        })
    )
}

#[test]
fn t13_locate_by_logical_object() {
    let Some(dev) = device() else { return };
    if not_on_tgt(
        &open(&dev),
        "no READ POSITION or LOCATE (t05 covers spacing)",
    ) {
        return;
    }
    let mut d = open(&dev);
    three_files(&mut d);
    d.rewind().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    use Seen::*;
    // From BOT to file 2 block 1: one LOCATE and one READ POSITION, and
    // the driver's own counters are then unknown (only LOCATE does that).
    let before = st_commands(&dev);
    d.locate(2, 1).unwrap();
    let used = st_commands(&dev).zip(before).map(|(a, b)| a - b);
    eprintln!("locate(2, 1) from BOT with file starts known: {used:?} st commands");
    assert_eq!(d.st_status().unwrap().file, None, "LOCATE was not used");
    assert_eq!(pos(&mut d), (2, 1));
    assert_eq!(d.position().unwrap().logical, 8);
    assert_eq!(read_one(&mut d, &mut buf), B(0x301, 1024));
    // Relative operations after LOCATE, with the driver's counters unknown.
    d.locate(2, 1).unwrap();
    let e = d.space_blocks(5).unwrap_err();
    assert!(e.to_string().contains("filemark"), "{e}");
    assert_eq!(pos(&mut d), (2, 3));
    assert_eq!(read_one(&mut d, &mut buf), Fm);
    d.locate(1, 1).unwrap();
    let e = d.space_blocks(-3).unwrap_err();
    assert!(e.to_string().contains("filemark"), "{e}");
    assert_eq!(pos(&mut d), (1, 0));
    d.locate(0, 1).unwrap();
    assert!(d.space_filemarks(-1).is_err());
    assert_eq!(pos(&mut d), (0, 0));
    d.locate(0, 2).unwrap();
    d.space_filemarks(2).unwrap();
    assert_eq!(pos(&mut d), (2, 0));
    d.locate(1, 1).unwrap();
    d.seek_end_of_data().unwrap();
    assert_eq!(pos(&mut d), (3, 0));
    // A fresh open knows no file starts: spacing finds them once.
    drop(d);
    let mut d = open(&dev);
    d.rewind().unwrap();
    let before = st_commands(&dev);
    d.locate(2, 2).unwrap();
    let used = st_commands(&dev).zip(before).map(|(a, b)| a - b);
    eprintln!("locate(2, 2) from BOT, nothing known: {used:?} st commands");
    assert_eq!(read_one(&mut d, &mut buf), B(0x302, 1536));
    for (f, b, expect) in [
        (2, 3, Fm),
        (1, 2, Fm),
        (0, 0, B(0x100, 512)),
        (3, 0, Eod),
        (1, 0, B(0x200, 512)),
        (0, 3, Fm),
    ] {
        d.locate(f, b).unwrap();
        assert_eq!(pos(&mut d), (f, b), "locate {f}/{b}");
        assert_eq!(read_one(&mut d, &mut buf), expect, "locate {f}/{b}");
    }
    for (f, b) in [(2, 4), (1, 3), (3, 1), (4, 0), (9, 2)] {
        let e = d.locate(f, b).unwrap_err();
        assert!(
            matches!(e, DeviceError::InvalidRequest { .. }),
            "locate {f}/{b}: {e}"
        );
        eprintln!("locate {f}/{b}: {e}");
    }
    // Still usable after a refusal.
    d.locate(2, 0).unwrap();
    assert_eq!(read_one(&mut d, &mut buf), B(0x300, 512));
    // A write truncates: the file starts after it are forgotten.
    d.locate(1, 1).unwrap();
    d.write_block(&block(0x211, 512)).unwrap();
    d.write_filemarks(1, false).unwrap();
    assert!(d.locate(2, 1).is_err(), "file 2 is empty now");
    d.locate(2, 0).unwrap();
    assert_eq!(read_one(&mut d, &mut buf), Eod);
    d.locate(1, 1).unwrap();
    assert_eq!(read_to_eod(&mut d), vec![B(0x211, 512), Fm, Eod]);
}

#[test]
fn t14_unit_attention_after_a_reset() {
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    three_files(&mut d);
    let mut buf = vec![0u8; 1 << 20];
    use Seen::*;
    // What the check after every operation costs.
    let t = std::time::Instant::now();
    let n = 1000;
    for _ in 0..n {
        assert_ne!(d.position_lost_in_reset(), Some(true));
    }
    eprintln!(
        "position_lost_in_reset: {:?} per check ({})",
        t.elapsed() / n,
        if d.position_lost_in_reset().is_some() {
            "sysfs attribute present"
        } else {
            "no sysfs attribute"
        }
    );
    d.locate(1, 1).unwrap();
    assert_eq!(read_one(&mut d, &mut buf), B(0x201, 1024));
    if !reset_drive(&dev) {
        eprintln!("cannot reset the drive: skipped");
        return;
    }
    // Reading after the reset: named, not a medium error.
    let r = d.read_block(&mut buf);
    eprintln!("read after a reset: {r:?}");
    assert!(is_unit_attention_reset(&r), "{r:?}");
    assert!(r.unwrap_err().position_lost());
    if let Some(lost) = d.position_lost_in_reset() {
        assert!(lost);
    }
    // The driver refuses relative operations until the tape is positioned;
    // they say the same.
    let r = d.space_blocks(-1);
    assert!(is_unit_attention_reset(&r), "{r:?}");
    assert!(d.position().is_err(), "the position is unknown");
    // Re-establish by locating; reading goes on where it was.
    let t = std::time::Instant::now();
    d.locate(1, 1).unwrap();
    eprintln!("re-established with locate(1, 1) in {:?}", t.elapsed());
    assert!(!d.position_lost_in_reset().unwrap_or(false));
    assert_eq!(pos(&mut d), (1, 1));
    assert_eq!(read_one(&mut d, &mut buf), B(0x201, 1024));
    // A reset while writing: the next write says so; end of data shows
    // what is on the cartridge, and writing goes on from there.
    d.seek_end_of_data().unwrap();
    assert_eq!(pos(&mut d), (3, 0));
    d.write_block(&block(0x400, 512)).unwrap();
    assert!(reset_drive(&dev));
    let r = d.write_block(&block(0x401, 512));
    eprintln!("write after a reset: {r:?}");
    assert!(is_unit_attention_reset(&r), "{r:?}");
    d.seek_end_of_data().unwrap();
    if emulation(&d) != Emulation::Tgt {
        // (tgt cannot count the blocks of an unterminated file.)
        assert_eq!(pos(&mut d), (3, 1));
    }
    d.write_block(&block(0x401, 512)).unwrap();
    d.write_filemarks(1, false).unwrap();
    d.locate(3, 0).unwrap();
    assert_eq!(
        read_to_eod(&mut d),
        vec![B(0x400, 512), B(0x401, 512), Fm, Eod]
    );
    // A reset between opens: opening rewinds (the position is unknown).
    assert!(reset_drive(&dev));
    drop(d);
    let mut d = open(&dev);
    assert_eq!(pos(&mut d), (0, 0));
    assert_eq!(read_one(&mut d, &mut buf), B(0x100, 512));
}

/// scsi_debug's error injection (debugfs), when it is there.
fn injection_file(dev: &str) -> Option<PathBuf> {
    let f = Path::new("/sys/kernel/debug/scsi_debug")
        .join(scsi_address(dev))
        .join("error");
    f.exists().then_some(f)
}

#[test]
fn t15_a_failed_write_loses_no_accepted_block() {
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    if emulation(&d) != Emulation::ScsiDebug {
        eprintln!("skipped: needs scsi_debug's error injection");
        return;
    }
    let Some(inject) = injection_file(&dev) else {
        eprintln!("no scsi_debug error injection (debugfs): skipped");
        return;
    };
    use Seen::*;
    d.rewind().unwrap();
    d.write_block(&block(0x1, 512)).unwrap();
    // A buffer at an odd address cannot be mapped for direct I/O, so st
    // copies it and lets write() return before the WRITE completes (its
    // write-behind); an aligned one goes straight to the drive.
    let mut odd = vec![0u8; 513];
    odd[1..].copy_from_slice(&block(0x2, 512));
    let aligned = block(0x2, 512);
    for (how, data) in [("buffered by st", &odd[1..]), ("direct", &aligned[..])] {
        // The next WRITE(6) fails once: MEDIUM ERROR, write error (0Ch/00h).
        std::fs::write(&inject, "2 -1 0x0a 0 0 0x2 0x3 0x0c 0x00").unwrap();
        let r = d.write_block(data);
        eprintln!("write {how} whose WRITE fails: {r:?}");
        // The failure belongs to this block: a current error, and nothing
        // the drive had accepted before is lost (not a deferred error).
        assert!(
            matches!(
                r,
                Err(DeviceError::MediumError {
                    file: 0,
                    block: 1,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(pos(&mut d), (0, 1));
        assert_eq!(d.tell().unwrap(), 1);
    }
    d.write_block(&odd[1..]).unwrap();
    d.write_filemarks(1, false).unwrap();
    d.rewind().unwrap();
    assert_eq!(read_to_eod(&mut d), vec![B(0x1, 512), B(0x2, 512), Fm, Eod]);
}

#[test]
fn t16_cartridge_memory_and_erase() {
    let Some(dev) = device() else { return };
    let mut d = open(&dev);
    // Neither emulation has cartridge memory: READ and WRITE ATTRIBUTE are
    // "not supported", and the drive carries on.
    assert!(
        matches!(d.cartridge_memory(), Err(DeviceError::Unsupported { .. })),
        "{:?}",
        d.cartridge_memory()
    );
    let label = tapir::device::sg::USER_MEDIUM_TEXT_LABEL
        .with_text("VM0001L9")
        .unwrap();
    let written = d.write_cartridge_memory(&[label]);
    assert!(
        matches!(written, Err(DeviceError::Unsupported { .. })),
        "{written:?}"
    );
    three_files(&mut d);
    d.rewind().unwrap();
    assert_eq!(
        read_one(&mut d, &mut vec![0u8; 1 << 20]),
        Seen::B(0x100, 512)
    );
    if not_on_tgt(&d, "no ERASE") {
        return;
    }
    // A short erase from the beginning leaves a blank tape.
    d.rewind().unwrap();
    d.erase(false).unwrap();
    d.rewind().unwrap();
    assert_eq!(read_to_eod(&mut d), vec![Seen::Eod]);
    assert!(d
        .positioning()
        .is_some_and(|p| p.read_position == Some(true)));
}
