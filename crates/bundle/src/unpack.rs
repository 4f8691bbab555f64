//! Safe unzip of a verified bundle into an empty directory.
//!
//! The end-of-central-directory record is read first, by hand: an archive that declares
//! more entries than allowed, or a central directory bigger than allowed, is refused before
//! the `zip` crate parses (and allocates for) a single entry, and that parse may then read
//! only what the record declared. Every entry of the central directory is checked before the
//! first byte is written: absolute paths, `..`, symlinks, device files and other special entries, duplicates
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_files: usize,
    pub max_total_bytes: u64,
    /// Largest uncompressed/compressed ratio of an entry bigger than `ratio_floor_bytes`.
    pub max_ratio: u64,
    /// Entries below this size may compress arbitrarily well (a small file of zeros is fine).
    pub ratio_floor_bytes: u64,
    /// Largest central directory (the archive's table of entries), in bytes. It is parsed
    /// into memory whole, so it is capped on its own: names and extra fields may be long.
    pub max_directory_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_files: 10_000,
            max_total_bytes: 4 * 1024 * 1024 * 1024,
            max_ratio: 100,
            ratio_floor_bytes: 1024 * 1024,
            // 10,000 entries with ~400-byte names and extras; 46 bytes is the smallest entry.
            max_directory_bytes: 4 * 1024 * 1024,
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

/// What [`check_zip`] found in an archive that passed every check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Entries that will be created (files and directories).
    pub entries: usize,
    /// Sum of the sizes the entries declare.
    pub declared_bytes: u64,
}

/// Runs every check of [`unpack_zip`] without writing anything: the hub calls it before it
/// signs a bundle (`edge-hub bundle publish`), so an archive the agent would refuse is
/// refused with the same code there.
pub fn check_zip(zip_path: &Path, limits: &UnpackLimits) -> Result<CheckReport, UnpackError> {
    let (_, plan) = open_checked(zip_path, limits)?;
    Ok(CheckReport { entries: plan.len(), declared_bytes: plan.iter().map(|p| p.declared).sum() })
}

type Archive = zip::ZipArchive<Budgeted<std::io::BufReader<fs::File>>>;

/// Opens the archive and plans every entry; refuses on the first unsafe one.
fn open_checked(zip_path: &Path, limits: &UnpackLimits) -> Result<(Archive, Vec<Planned>), UnpackError> {
    let mut file =
        fs::File::open(zip_path).map_err(|e| refuse(codes::ZIP_INVALID, format!("cannot open the bundle: {e}")))?;
    let end = read_end_record(&mut file)?;
    if end.entries > limits.max_files as u64 {
        return Err(refuse(
            codes::ZIP_TOO_MANY_FILES,
            format!("the bundle has {} entries, more than the {} allowed", end.entries, limits.max_files),
        ));
    }
    if end.directory_bytes > limits.max_directory_bytes {
        return Err(refuse(
            codes::ZIP_TOO_LARGE,
            format!(
                "the bundle's table of entries is {} bytes, more than the {} allowed",
                end.directory_bytes, limits.max_directory_bytes
            ),
        ));
    }
    // The zip crate falls back to earlier end records when the last one does not parse, so a
    // second, hidden directory could still be read: it may read only what the checked
    // record declared (plus the tail it searches), after which reads fail.
    let budget = Arc::new(AtomicU64::new(end.directory_bytes.saturating_add(PARSE_SLACK_BYTES)));
    let reader = Budgeted { inner: std::io::BufReader::new(file), budget: Arc::clone(&budget) };
    let mut archive = zip::ZipArchive::new(reader)
        .map_err(|e| refuse(codes::ZIP_INVALID, format!("the bundle is not a readable zip archive: {e}")))?;
    budget.store(u64::MAX, Ordering::Relaxed);
    // The zip crate keeps one entry per name, so exact duplicates vanish from `archive`;
    // the end-of-central-directory record still counts them. Different tools pick different
    // copies of a duplicated name, so the bundle is ambiguous and refused.
    if end.entries != archive.len() as u64 {
        return Err(refuse(
            codes::ZIP_DUPLICATE_ENTRY,
            format!("the archive lists {} entries but only {} distinct names", end.entries, archive.len()),
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

    Ok((archive, plan))
}

/// Unpacks `zip_path` into `dest`, which must not exist yet or be empty.
pub fn unpack_zip(zip_path: &Path, dest: &Path, limits: &UnpackLimits) -> Result<UnpackReport, UnpackError> {
    let (mut archive, plan) = open_checked(zip_path, limits)?;
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

/// Bytes the zip crate may read while it parses, beyond the central directory itself: its
/// backwards search for the end record (at most 64 KiB of comment) and the zip64 records.
const PARSE_SLACK_BYTES: u64 = 256 * 1024;

/// A reader with a shared budget of bytes it may still hand out; a read past it fails. It
/// sits above the buffer, so it counts what the zip crate consumes, not the refills of the
/// buffer (the crate seeks after every entry, which discards it).
struct Budgeted<R> {
    inner: R,
    budget: Arc<AtomicU64>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.budget.load(Ordering::Relaxed);
        if left == 0 {
            return Err(std::io::Error::other("the archive's directory is larger than its end record declares"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if left != u64::MAX {
            self.budget.fetch_sub(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

impl<R: std::io::Seek> std::io::Seek for Budgeted<R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// What the end-of-central-directory record (or its zip64 twin) declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndRecord {
    entries: u64,
    directory_bytes: u64,
}

const EOCD_SIGNATURE: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_SIGNATURE: [u8; 4] = [0x50, 0x4b, 0x06, 0x07];
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_SIGNATURE: [u8; 4] = [0x50, 0x4b, 0x06, 0x06];

/// Reads the last end-of-central-directory record from the file's tail (22 bytes plus a
/// comment of at most 65,535), and the zip64 record it points to when there is one. Only
/// these few bytes are read, whatever the archive holds.
fn read_end_record(file: &mut fs::File) -> Result<EndRecord, UnpackError> {
    use std::io::{Seek, SeekFrom};
    let invalid = |what: String| refuse(codes::ZIP_INVALID, what);
    let len = file.metadata().map_err(|e| invalid(format!("cannot read the bundle: {e}")))?.len();
    let tail_len = len.min((EOCD_LEN + 65_535) as u64);
    let mut tail = vec![0u8; tail_len as usize];
    file.seek(SeekFrom::Start(len - tail_len))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(|e| invalid(format!("cannot read the bundle: {e}")))?;
    let no_record = || {
        invalid(
            "the bundle has no end-of-central-directory record: it is not a zip archive, or it was cut short".into(),
        )
    };
    let candidates = || {
        (0..=tail.len().saturating_sub(EOCD_LEN))
            .rev()
            .filter(|&i| tail.len() >= EOCD_LEN && tail[i..i + 4] == EOCD_SIGNATURE)
    };
    // The real record's comment runs exactly to the end of the file; a signature inside the
    // comment or the data does not. Fall back to the last signature, as readers do.
    let comment_fits =
        |i: usize| i + EOCD_LEN + u16::from_le_bytes([tail[i + 20], tail[i + 21]]) as usize == tail.len();
    let eocd = candidates().find(|&i| comment_fits(i)).or_else(|| candidates().next()).ok_or_else(no_record)?;
    let u16_at = |i: usize| u64::from(u16::from_le_bytes([tail[i], tail[i + 1]]));
    let u32_at = |i: usize| u64::from(u32::from_le_bytes([tail[i], tail[i + 1], tail[i + 2], tail[i + 3]]));
    // Both counts: readers differ in which one they trust.
    let entries = u16_at(eocd + 8).max(u16_at(eocd + 10));
    let directory_bytes = u32_at(eocd + 12);
    let locator = eocd.checked_sub(ZIP64_LOCATOR_LEN).filter(|&l| tail[l..l + 4] == ZIP64_LOCATOR_SIGNATURE);
    let Some(locator) = locator else {
        return Ok(EndRecord { entries, directory_bytes });
    };
    // zip64: the locator sits right before the record and points at the zip64 record, whose
    // 64-bit fields replace the saturated 16/32-bit ones.
    let offset = u64::from_le_bytes(tail[locator + 8..locator + 16].try_into().expect("8 bytes"));
    let mut record = [0u8; 56];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut record))
        .map_err(|_| invalid(format!("the bundle's zip64 end record at offset {offset} is unreadable")))?;
    if record[0..4] != ZIP64_EOCD_SIGNATURE {
        return Err(invalid(format!(
            "the bundle's zip64 locator points at offset {offset}, where no zip64 end record is"
        )));
    }
    let u64_at = |i: usize| u64::from_le_bytes(record[i..i + 8].try_into().expect("8 bytes"));
    Ok(EndRecord { entries: u64_at(24).max(u64_at(32)), directory_bytes: u64_at(40) })
}
