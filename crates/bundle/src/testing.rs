//! Builders for test archives, including hostile ones a correct tool never writes (links,
//! device entries, duplicate names). Used by this crate's tests, the agent's tests and the
//! benchmark; it must never be used to build a real bundle.

use std::io::Write;
use std::path::Path;
use zip::write::SimpleFileOptions;

/// One entry of a test archive.
pub enum Entry<'a> {
    File {
        name: &'a str,
        data: &'a [u8],
        mode: u32,
    },
    Dir {
        name: &'a str,
    },
    Symlink {
        name: &'a str,
        target: &'a str,
    },
    /// A regular file whose mode in the central directory is patched to `mode` afterwards
    /// (e.g. `0o020644`, a character device).
    Special {
        name: &'a str,
        mode: u32,
    },
}

/// Writes `entries` as a deflated zip to `path`.
pub fn write_zip(path: &Path, entries: &[Entry<'_>]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut writer = zip::ZipWriter::new(file);
    let base = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut patches = Vec::new();
    for entry in entries {
        let result = match entry {
            Entry::File { name, data, mode } => writer
                .start_file(
                    name.to_string(),
                    base.unix_permissions(*mode).large_file(data.len() as u64 >= u32::MAX as u64),
                )
                .and_then(|_| writer.write_all(data).map_err(Into::into)),
            Entry::Dir { name } => writer.add_directory(name.to_string(), base),
            Entry::Symlink { name, target } => writer.add_symlink(name.to_string(), target.to_string(), base),
            Entry::Special { name, mode } => {
                patches.push((name.to_string(), *mode));
                writer.start_file(name.to_string(), base.unix_permissions(0o644))
            }
        };
        result.map_err(std::io::Error::other)?;
    }
    writer.finish().map_err(std::io::Error::other)?;
    if !patches.is_empty() {
        let mut bytes = std::fs::read(path)?;
        for (name, mode) in patches {
            patch_central_mode(&mut bytes, &name, mode)?;
        }
        std::fs::write(path, bytes)?;
    }
    Ok(())
}

/// Sets the Unix mode (high 16 bits of the external attributes) of `name` in the central
/// directory.
fn patch_central_mode(bytes: &mut [u8], name: &str, mode: u32) -> std::io::Result<()> {
    let signature = [0x50, 0x4b, 0x01, 0x02];
    let mut i = 0;
    while i + 46 <= bytes.len() {
        if bytes[i..i + 4] == signature {
            let name_len = u16::from_le_bytes([bytes[i + 28], bytes[i + 29]]) as usize;
            let start = i + 46;
            if bytes.get(start..start + name_len) == Some(name.as_bytes()) {
                // "version made by": high byte 3 = Unix, so readers use the mode.
                bytes[i + 5] = 3;
                let attrs = (mode << 16).to_le_bytes();
                bytes[i + 38..i + 42].copy_from_slice(&attrs);
                return Ok(());
            }
        }
        i += 1;
    }
    Err(std::io::Error::other(format!("{name} not found in the central directory")))
}

/// Replaces every occurrence of `from` with `to` (same length) in the file: turns two
/// distinct names into one duplicate name in both local and central headers.
pub fn rename_in_place(path: &Path, from: &str, to: &str) -> std::io::Result<()> {
    assert_eq!(from.len(), to.len(), "same-length names only");
    let mut bytes = std::fs::read(path)?;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from.as_bytes() {
            bytes[i..i + from.len()].copy_from_slice(to.as_bytes());
        }
        i += 1;
    }
    std::fs::write(path, bytes)
}

/// Writes a zip of `count` empty stored files named `f0000000`, `f0000001`…, byte by byte
/// (the zip crate would need seconds and much memory for 200,000 entries). Above 65,535
/// entries the end records are zip64, as every real tool writes them.
pub fn write_many_empty_files(path: &Path, count: u32) -> std::io::Result<()> {
    const DOS_DATE_1980_01_01: u16 = 0x21;
    let mut local = Vec::with_capacity(count as usize * 38);
    let mut central = Vec::with_capacity(count as usize * 54);
    for i in 0..count {
        let name = format!("f{i:07}");
        let offset = u32::try_from(local.len()).map_err(std::io::Error::other)?;
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&20u16.to_le_bytes()); // version needed
        local.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // flags, method (stored), time
        local.extend_from_slice(&DOS_DATE_1980_01_01.to_le_bytes());
        local.extend_from_slice(&[0; 12]); // crc, compressed and uncompressed size
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes()); // extra length
        local.extend_from_slice(name.as_bytes());

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        central.extend_from_slice(&20u16.to_le_bytes()); // version needed
        central.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // flags, method, time
        central.extend_from_slice(&DOS_DATE_1980_01_01.to_le_bytes());
        central.extend_from_slice(&[0; 12]); // crc, sizes
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]); // extra, comment, disk, internal and external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let directory_offset = local.len() as u64;
    let directory_bytes = central.len() as u64;
    let mut out = local;
    out.extend_from_slice(&central);
    drop(central);
    let zip64 = count > 0xFFFE;
    if zip64 {
        let record_offset = out.len() as u64;
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes()); // size of the rest of the record
        out.extend_from_slice(&45u16.to_le_bytes()); // version made by
        out.extend_from_slice(&45u16.to_le_bytes()); // version needed
        out.extend_from_slice(&[0; 8]); // this disk, disk of the directory
        out.extend_from_slice(&u64::from(count).to_le_bytes());
        out.extend_from_slice(&u64::from(count).to_le_bytes());
        out.extend_from_slice(&directory_bytes.to_le_bytes());
        out.extend_from_slice(&directory_offset.to_le_bytes());
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // disk of the zip64 record
        out.extend_from_slice(&record_offset.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // disks in total
    }
    let short_count = if zip64 { 0xFFFF } else { count as u16 };
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // this disk, disk of the directory
    out.extend_from_slice(&short_count.to_le_bytes());
    out.extend_from_slice(&short_count.to_le_bytes());
    out.extend_from_slice(&u32::try_from(directory_bytes).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&u32::try_from(directory_offset).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    std::fs::write(path, out)
}
