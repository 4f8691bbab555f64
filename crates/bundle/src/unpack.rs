//! Safe unzip of a verified bundle into an empty directory.
//!
//! Every entry of the central directory is checked before the first byte is written:
//! absolute paths, `..`, symlinks, device files and other special entries, duplicates
//! (including case-only and file-versus-directory collisions), the file count, the declared
//! total size and the compression ratio. While writing, actual sizes are counted again, so
//! an entry that inflates past what it declared is stopped as a bomb. Only regular files may
//! carry the executable bit. It must never write outside the target directory, never follow
//! or create a link, and never trust a size from the archive without counting.

use crate::codes;
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_files: usize,
    pub max_total_bytes: u64,
    /// Largest uncompressed/compressed ratio of an entry bigger than `ratio_floor_bytes`.
    pub max_ratio: u64,
    /// Entries below this size may compress arbitrarily well (a small file of zeros is fine).
    pub ratio_floor_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_files: 10_000,
            max_total_bytes: 4 * 1024 * 1024 * 1024,
            max_ratio: 100,
            ratio_floor_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct UnpackError {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> UnpackError {
    UnpackError { code, message: message.into() }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub files: usize,
    pub bytes: u64,
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

struct Planned {
    index: usize,
    relative: PathBuf,
    is_dir: bool,
    executable: bool,
    declared: u64,
}

/// Unpacks `zip_path` into `dest`, which must not exist yet or be empty.
pub fn unpack_zip(zip_path: &Path, dest: &Path, limits: &UnpackLimits) -> Result<UnpackReport, UnpackError> {
    let file =
        fs::File::open(zip_path).map_err(|e| refuse(codes::ZIP_INVALID, format!("cannot open the bundle: {e}")))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| refuse(codes::ZIP_INVALID, format!("the bundle is not a readable zip archive: {e}")))?;
    // The zip crate keeps one entry per name, so exact duplicates vanish from `archive`;
    // the end-of-central-directory record still counts them. Different tools pick different
    // copies of a duplicated name, so the bundle is ambiguous and refused.
    if let Some(declared) = declared_entry_count(zip_path) {
        if declared != archive.len() as u64 {
            return Err(refuse(
                codes::ZIP_DUPLICATE_ENTRY,
                format!("the archive lists {declared} entries but only {} distinct names", archive.len()),
            ));
        }
    }
    if archive.len() > limits.max_files {
        return Err(refuse(
            codes::ZIP_TOO_MANY_FILES,
            format!("the bundle has {} entries, more than the {} allowed", archive.len(), limits.max_files),
        ));
    }

    let mut plan = Vec::with_capacity(archive.len());
    let mut seen = HashSet::new();
    let mut dirs_needed = HashSet::new();
    let mut total: u64 = 0;
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .map_err(|e| refuse(codes::ZIP_INVALID, format!("entry {index} is unreadable: {e}")))?;
        let raw = entry.name_raw().to_vec();
        let name = String::from_utf8(raw)
            .map_err(|_| refuse(codes::ZIP_INVALID, format!("entry {index} has a name that is not UTF-8")))?;
        let (relative, is_dir_name) = safe_relative_path(&name)?;
        let mode = entry.unix_mode();
        let kind = mode.map(|m| m & S_IFMT).unwrap_or(0);
        if kind == S_IFLNK {
            return Err(refuse(
                codes::ZIP_SYMLINK,
                format!("{name:?} is a symbolic link; bundles may not contain links"),
            ));
        }
        let is_dir = is_dir_name || kind == S_IFDIR;
        if kind != 0 && kind != S_IFREG && kind != S_IFDIR {
            return Err(refuse(
                codes::ZIP_SPECIAL_FILE,
                format!("{name:?} is a device, pipe or socket entry (mode {:o})", mode.unwrap_or(0)),
            ));
        }
        if entry.encrypted() {
            return Err(refuse(codes::ZIP_INVALID, format!("{name:?} is encrypted")));
        }
        if !matches!(entry.compression(), zip::CompressionMethod::Stored | zip::CompressionMethod::Deflated) {
            return Err(refuse(
                codes::ZIP_INVALID,
                format!("{name:?} uses compression {:?}; only stored and deflate are accepted", entry.compression()),
            ));
        }
        if relative.as_os_str().is_empty() {
            // "./" and the like: nothing to create.
            continue;
        }
        // Case-folded, so a bundle cannot rely on two names that collide on macOS/Windows.
        let key = relative.to_string_lossy().to_lowercase();
        if !seen.insert(key.clone()) {
            return Err(refuse(codes::ZIP_DUPLICATE_ENTRY, format!("{name:?} appears more than once")));
        }
        let declared = if is_dir { 0 } else { entry.size() };
        if !is_dir {
            let compressed = entry.compressed_size().max(1);
            if declared > limits.ratio_floor_bytes && declared / compressed > limits.max_ratio {
                return Err(refuse(
                    codes::ZIP_BOMB,
                    format!(
                        "{name:?} inflates {}× ({} bytes from {}); the limit is {}×",
                        declared / compressed,
                        declared,
                        compressed,
                        limits.max_ratio
                    ),
                ));
            }
        }
        total = total.saturating_add(declared);
        if total > limits.max_total_bytes {
            return Err(refuse(
                codes::ZIP_TOO_LARGE,
                format!("the bundle unpacks to more than {} bytes", limits.max_total_bytes),
            ));
        }
        let mut parent = relative.parent();
        while let Some(p) = parent {
            if p.as_os_str().is_empty() {
                break;
            }
            dirs_needed.insert(p.to_string_lossy().to_lowercase());
            parent = p.parent();
        }
        let executable = !is_dir && kind == S_IFREG && mode.is_some_and(|m| m & 0o111 != 0);
        plan.push(Planned { index, relative, is_dir, executable, declared });
    }
    // A file named like a directory another entry needs would make unpacking fail midway.
    for item in &plan {
        if !item.is_dir && dirs_needed.contains(&item.relative.to_string_lossy().to_lowercase()) {
            return Err(refuse(
                codes::ZIP_DUPLICATE_ENTRY,
                format!("{:?} is both a file and a directory", item.relative.display().to_string()),
            ));
        }
    }

    if dest.exists() && fs::read_dir(dest).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(refuse(codes::ZIP_INVALID, format!("{} is not empty", dest.display())));
    }
    fs::create_dir_all(dest)
        .map_err(|e| refuse(codes::ZIP_INVALID, format!("cannot create {}: {e}", dest.display())))?;
    let mut report = UnpackReport::default();
    let mut written_total: u64 = 0;
    for item in plan {
        let target = dest.join(&item.relative);
        if item.is_dir {
            fs::create_dir_all(&target)
                .map_err(|e| refuse(codes::ZIP_INVALID, format!("cannot create {}: {e}", target.display())))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| refuse(codes::ZIP_INVALID, format!("cannot create {}: {e}", parent.display())))?;
        }
        let mut entry = archive
            .by_index(item.index)
            .map_err(|e| refuse(codes::ZIP_INVALID, format!("{}: {e}", item.relative.display())))?;
        let mut out = create_new_file(&target, item.executable)
            .map_err(|e| refuse(codes::ZIP_INVALID, format!("cannot create {}: {e}", target.display())))?;
        // Read at most one byte past what the entry declared: more means it lied.
        let mut limited = (&mut entry).take(item.declared.saturating_add(1));
        let mut buffer = vec![0u8; 64 * 1024];
        let mut written: u64 = 0;
        loop {
            let n = limited
                .read(&mut buffer)
                .map_err(|e| refuse(codes::ZIP_INVALID, format!("{} is corrupt: {e}", item.relative.display())))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            written_total += n as u64;
            if written > item.declared || written_total > limits.max_total_bytes {
                return Err(refuse(
                    codes::ZIP_BOMB,
                    format!("{} inflates past its declared size", item.relative.display()),
                ));
            }
            out.write_all(&buffer[..n])
                .map_err(|e| refuse(codes::ZIP_INVALID, format!("cannot write {}: {e}", target.display())))?;
        }
        out.sync_all().map_err(|e| refuse(codes::ZIP_INVALID, format!("cannot write {}: {e}", target.display())))?;
        report.files += 1;
        report.bytes += written;
    }
    Ok(report)
}

/// Splits an entry name into safe components. Both `/` and `\` separate (zips made on
/// Windows use either); the returned bool says the name ends in a separator (a directory).
pub fn safe_relative_path(name: &str) -> Result<(PathBuf, bool), UnpackError> {
    if name.contains('\0') {
        return Err(refuse(codes::ZIP_INVALID, format!("{name:?} contains a NUL byte")));
    }
    let absolute = name.starts_with('/')
        || name.starts_with('\\')
        || name.as_bytes().get(1) == Some(&b':')
        || name.starts_with("//");
    if absolute {
        return Err(refuse(codes::ZIP_ABSOLUTE_PATH, format!("{name:?} is an absolute path")));
    }
    let mut path = PathBuf::new();
    for component in name.split(['/', '\\']) {
        match component {
            "" | "." => continue,
            ".." => {
                return Err(refuse(codes::ZIP_PATH_TRAVERSAL, format!("{name:?} climbs out of the bundle with `..`")))
            }
            c if c.contains(':') => {
                return Err(refuse(codes::ZIP_ABSOLUTE_PATH, format!("{name:?} names a drive or stream")))
            }
            c => path.push(c),
        }
    }
    Ok((path, name.ends_with('/') || name.ends_with('\\')))
}

fn create_new_file(path: &Path, executable: bool) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if executable { 0o755 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = executable;
    options.open(path)
}

/// Total entries recorded in the end-of-central-directory record (zip64 aware).
fn declared_entry_count(zip_path: &Path) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    let mut file = fs::File::open(zip_path).ok()?;
    let len = file.metadata().ok()?.len();
    // EOCD is 22 bytes plus a comment of at most 65535 bytes.
    let tail_len = len.min(22 + 65_535);
    file.seek(SeekFrom::Start(len - tail_len)).ok()?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail).ok()?;
    let eocd = (0..=tail.len().checked_sub(22)?).rev().find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])?;
    let count = u16::from_le_bytes([tail[eocd + 10], tail[eocd + 11]]);
    if count != 0xFFFF {
        return Some(u64::from(count));
    }
    // zip64: the locator sits right before the EOCD and points at the zip64 EOCD record.
    let locator = eocd.checked_sub(20)?;
    if tail[locator..locator + 4] != [0x50, 0x4b, 0x06, 0x07] {
        return None;
    }
    let offset = u64::from_le_bytes(tail[locator + 8..locator + 16].try_into().ok()?);
    let mut record = [0u8; 56];
    file.seek(SeekFrom::Start(offset)).ok()?;
    file.read_exact(&mut record).ok()?;
    if record[0..4] != [0x50, 0x4b, 0x06, 0x06] {
        return None;
    }
    Some(u64::from_le_bytes(record[32..40].try_into().ok()?))
}
