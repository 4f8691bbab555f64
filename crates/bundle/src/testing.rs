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
