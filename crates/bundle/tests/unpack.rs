//! Safe unpack: each hostile archive is refused with its code, and nothing is written
//! anywhere (not in the target directory, not next to it).

use edge_bundle::codes;
use edge_bundle::testing::{rename_in_place, write_many_empty_files, write_zip, Entry};
use edge_bundle::unpack::{check_zip, unpack_zip, UnpackLimits};
use std::path::Path;

fn refused(entries: &[Entry<'_>], limits: UnpackLimits) -> &'static str {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("b.zip");
    write_zip(&zip, entries).unwrap();
    refused_file(&zip, dir.path(), limits)
}

fn refused_file(zip: &Path, dir: &Path, limits: UnpackLimits) -> &'static str {
    let dest = dir.join("out");
    let err = unpack_zip(zip, &dest, &limits).expect_err("must be refused");
    assert!(!err.message.is_empty());
    // Refused before writing anything: the target was never created, and nothing new
    // appeared beside it.
    assert!(!dest.exists(), "{err}: target directory was created");
    let names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{err}: something was written next to the target: {names:?}");
    err.code
}

const FILE: u32 = 0o644;

#[test]
fn zip_slip_is_refused() {
    let entries = [
        Entry::File { name: "ok.txt", data: b"x", mode: FILE },
        Entry::File { name: "../evil.txt", data: b"x", mode: FILE },
    ];
    assert_eq!(refused(&entries, UnpackLimits::default()), codes::ZIP_PATH_TRAVERSAL);
    let nested = [Entry::File { name: "a/../../evil.txt", data: b"x", mode: FILE }];
    assert_eq!(refused(&nested, UnpackLimits::default()), codes::ZIP_PATH_TRAVERSAL);
    let backslash = [Entry::File { name: "a\\..\\..\\evil.txt", data: b"x", mode: FILE }];
    assert_eq!(refused(&backslash, UnpackLimits::default()), codes::ZIP_PATH_TRAVERSAL);
}

#[test]
fn absolute_paths_are_refused() {
    for name in ["/etc/evil", "\\windows\\evil", "C:/evil", "c:evil"] {
        let entries = [Entry::File { name, data: b"x", mode: FILE }];
        assert_eq!(refused(&entries, UnpackLimits::default()), codes::ZIP_ABSOLUTE_PATH, "{name}");
    }
}

#[test]
fn symlinks_are_refused_even_when_they_look_harmless() {
    // The classic escape: a link to / and then a file "through" it.
    let escape =
        [Entry::Symlink { name: "link", target: "/etc" }, Entry::File { name: "link/passwd", data: b"x", mode: FILE }];
    assert_eq!(refused(&escape, UnpackLimits::default()), codes::ZIP_SYMLINK);
    let inside =
        [Entry::File { name: "a.txt", data: b"x", mode: FILE }, Entry::Symlink { name: "b.txt", target: "a.txt" }];
    assert_eq!(refused(&inside, UnpackLimits::default()), codes::ZIP_SYMLINK);
}

#[test]
fn device_files_are_refused() {
    for mode in [0o020_644, 0o060_644, 0o010_644, 0o140_644] {
        let entries = [Entry::Special { name: "dev", mode }];
        assert_eq!(refused(&entries, UnpackLimits::default()), codes::ZIP_SPECIAL_FILE, "{mode:o}");
    }
}

#[test]
fn duplicate_entries_are_refused() {
    let case_only = [
        Entry::File { name: "Run.sh", data: b"a", mode: FILE },
        Entry::File { name: "run.sh", data: b"b", mode: FILE },
    ];
    assert_eq!(refused(&case_only, UnpackLimits::default()), codes::ZIP_DUPLICATE_ENTRY);
    let file_and_dir =
        [Entry::File { name: "x", data: b"a", mode: FILE }, Entry::File { name: "x/y", data: b"b", mode: FILE }];
    assert_eq!(refused(&file_and_dir, UnpackLimits::default()), codes::ZIP_DUPLICATE_ENTRY);

    // Exact duplicates cannot be written by the zip crate; make them by renaming bytes.
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("b.zip");
    write_zip(
        &zip,
        &[
            Entry::File { name: "aaa.sh", data: b"1", mode: FILE },
            Entry::File { name: "bbb.sh", data: b"2", mode: FILE },
        ],
    )
    .unwrap();
    rename_in_place(&zip, "bbb.sh", "aaa.sh").unwrap();
    assert_eq!(refused_file(&zip, dir.path(), UnpackLimits::default()), codes::ZIP_DUPLICATE_ENTRY);
}

#[test]
fn file_count_and_total_size_caps_hold() {
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry<'_>> = names.iter().map(|n| Entry::File { name: n, data: b"x", mode: FILE }).collect();
    let limits = UnpackLimits { max_files: 10, ..UnpackLimits::default() };
    assert_eq!(refused(&entries, limits), codes::ZIP_TOO_MANY_FILES);

    let data = vec![7u8; 4096];
    let entries =
        [Entry::File { name: "a", data: &data, mode: FILE }, Entry::File { name: "b", data: &data, mode: FILE }];
    let limits = UnpackLimits { max_total_bytes: 6000, ..UnpackLimits::default() };
    assert_eq!(refused(&entries, limits), codes::ZIP_TOO_LARGE);
}

#[test]
fn zip_bombs_are_refused_by_ratio() {
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let entries = [Entry::File { name: "bomb.bin", data: &zeros, mode: FILE }];
    assert_eq!(refused(&entries, UnpackLimits::default()), codes::ZIP_BOMB);
}

#[test]
fn a_good_bundle_unpacks_with_the_exec_bit_on_regular_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("b.zip");
    let small_zeros = vec![0u8; 64 * 1024];
    write_zip(
        &zip,
        &[
            Entry::Dir { name: "bin/" },
            Entry::File { name: "bin/run", data: b"#!/bin/sh\necho hi\n", mode: 0o755 },
            Entry::File { name: "data/zeros", data: &small_zeros, mode: FILE },
            Entry::File { name: "./main.sh", data: b"echo main\n", mode: 0o644 },
        ],
    )
    .unwrap();
    let dest = dir.path().join("out");
    let report = unpack_zip(&zip, &dest, &UnpackLimits::default()).unwrap();
    assert_eq!(report.files, 3);
    assert_eq!(std::fs::read(dest.join("main.sh")).unwrap(), b"echo main\n");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("bin/run") & 0o111, 0o111);
        assert_eq!(mode("main.sh") & 0o111, 0);
        assert_eq!(mode("data/zeros") & 0o111, 0);
    }
    // A second unpack into the same, now non-empty directory is refused.
    assert_eq!(unpack_zip(&zip, &dest, &UnpackLimits::default()).unwrap_err().code, codes::ZIP_INVALID);
}

#[test]
fn the_entry_count_comes_from_the_zip64_end_record_before_any_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("b.zip");
    // Over 65,535 entries: the classic record says 0xFFFF, the zip64 record the truth.
    write_many_empty_files(&zip, 70_000).unwrap();
    assert_eq!(refused_file(&zip, dir.path(), UnpackLimits::default()), codes::ZIP_TOO_MANY_FILES);
    let message = unpack_zip(&zip, &dir.path().join("out"), &UnpackLimits::default()).unwrap_err().message;
    assert!(message.contains("70000 entries"), "the zip64 count, not 65535: {message}");
    // Control: allowed that many, the same archive passes every check, so the record was
    // read right and the refusal above was the count's.
    let limits = UnpackLimits { max_files: 70_000, ..UnpackLimits::default() };
    assert_eq!(check_zip(&zip, &limits).unwrap().entries, 70_000);
}

#[test]
fn the_central_directory_size_is_capped() {
    let entries = [
        Entry::File { name: "a-long-enough-name-1.txt", data: b"x", mode: FILE },
        Entry::File { name: "a-long-enough-name-2.txt", data: b"x", mode: FILE },
    ];
    let limits = UnpackLimits { max_directory_bytes: 100, ..UnpackLimits::default() };
    assert_eq!(refused(&entries, limits), codes::ZIP_TOO_LARGE);
    // Control: the default cap takes it.
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("b.zip");
    write_zip(&zip, &entries).unwrap();
    assert_eq!(check_zip(&zip, &UnpackLimits::default()).unwrap().entries, 2);
}

#[test]
fn a_hidden_directory_behind_a_broken_last_record_is_not_parsed() {
    // A real 30,000-entry archive, then a last end record that declares one entry at offset
    // 0 (a local header, so it does not parse). The zip crate falls back to the earlier
    // record; the checks passed on the last one, so that fallback may not read 1.6 MB of
    // hidden directory.
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("b.zip");
    write_many_empty_files(&zip, 30_000).unwrap();
    let mut bytes = std::fs::read(&zip).unwrap();
    bytes.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&46u32.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    std::fs::write(&zip, bytes).unwrap();
    let limits = UnpackLimits { max_files: 100_000, ..UnpackLimits::default() };
    // ZIP_INVALID (the read budget ran out), not a refusal after the whole parse.
    assert_eq!(refused_file(&zip, dir.path(), limits), codes::ZIP_INVALID);
}
