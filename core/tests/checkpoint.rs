//! The checkpoint container: exact layout, bit-exact round trips, and that every kind
//! of damage (truncation at any byte, any flipped byte, bogus lengths, other files)
//! is a typed error naming the file, never a panic or a huge allocation; writes are
//! atomic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use regimen_core::runtime::{
    read_checkpoint, write_checkpoint, CheckpointData, CheckpointError, CHECKPOINT_FORMAT_VERSION,
};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Encodes a checkpoint by hand from the layout in the module documentation, with
/// free control over every length field.
fn encode(version: u32, header: &[u8], tensors: &[(&[u8], u64, &[f32])]) -> Vec<u8> {
    let mut bytes = b"RGMNCKPT".to_vec();
    bytes.extend(version.to_le_bytes());
    bytes.extend((header.len() as u64).to_le_bytes());
    bytes.extend(header);
    bytes.extend((tensors.len() as u64).to_le_bytes());
    for (name, count, data) in tensors {
        bytes.extend((name.len() as u32).to_le_bytes());
        bytes.extend(*name);
        bytes.extend(count.to_le_bytes());
        for value in *data {
            bytes.extend(value.to_le_bytes());
        }
    }
    seal(bytes)
}

/// Appends the SHA-256 of the bytes.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let digest = Sha256::digest(&bytes);
    bytes.extend(digest);
    bytes
}

fn small_checkpoint(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("small.ckpt");
    let header = json!({"step": 3, "lr": 0.1});
    write_checkpoint(&path, &header, &[("w", &[1.5, -2.0]), ("b", &[0.25])]).unwrap();
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

fn read_bytes(dir: &Path, bytes: &[u8]) -> Result<CheckpointData, CheckpointError> {
    let path = dir.join("damaged.ckpt");
    fs::write(&path, bytes).unwrap();
    read_checkpoint(&path)
}

fn assert_names_file(err: &CheckpointError, file: &str) {
    assert!(
        err.to_string().contains(file),
        "error does not name {file}: {err}"
    );
}

#[test]
fn layout_is_the_documented_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = small_checkpoint(dir.path());
    let header = serde_json::to_vec(&json!({"step": 3, "lr": 0.1})).unwrap();
    let expected = encode(
        CHECKPOINT_FORMAT_VERSION,
        &header,
        &[(b"w", 2, &[1.5, -2.0]), (b"b", 1, &[0.25])],
    );
    assert_eq!(bytes, expected);
    // 8 magic + 4 version + 8 header length + header + 8 count
    // + (4 + 1 + 8 + 8) + (4 + 1 + 8 + 4) + 32 checksum.
    assert_eq!(bytes.len(), 8 + 4 + 8 + header.len() + 8 + 21 + 17 + 32);
}

#[test]
fn round_trip_keeps_every_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bits.ckpt");
    let header = json!({
        "fingerprint": "abc",
        "step": 12345678901234u64,
        "third": 1.0 / 3.0,
        "tiny": 5e-324,
        "nested": {"list": [1, -2.5, null, true]},
        "unicode": "δ é 漢",
    });
    let nan_with_payload = f32::from_bits(0x7fc0_1234);
    let negative_nan = f32::from_bits(0xffc0_0001);
    let special = [
        -0.0,
        0.0,
        nan_with_payload,
        negative_nan,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE / 8.0, // subnormal
        f32::MAX,
        1.0 / 3.0,
    ];
    // Longer than one 64 KiB chunk, and not a multiple of it.
    let big: Vec<f32> = (0..40_000).map(|i| (i as f32).sin() * 1e-3).collect();
    let tensors: Vec<(&str, &[f32])> = vec![
        ("layers.0.weight", &special),
        ("empty", &[]),
        ("名前.bias", &big),
    ];
    write_checkpoint(&path, &header, &tensors).unwrap();
    let data = read_checkpoint(&path).unwrap();

    assert_eq!(data.header, header);
    assert_eq!(
        data.header["third"].as_f64().unwrap().to_bits(),
        (1.0f64 / 3.0).to_bits()
    );
    assert_eq!(data.tensors.len(), 3);
    for ((name, values), (read_name, read_values)) in tensors.iter().zip(&data.tensors) {
        assert_eq!(name, read_name);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(values), bits(read_values), "{name}");
    }
}

#[test]
fn round_trip_without_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.ckpt");
    write_checkpoint(&path, &json!(null), &[]).unwrap();
    let data = read_checkpoint(&path).unwrap();
    assert_eq!(
        data,
        CheckpointData {
            header: json!(null),
            tensors: vec![]
        }
    );
    // 8 + 4 + 8 + "null" + 8 + 32.
    assert_eq!(fs::read(&path).unwrap().len(), 64);
}

#[test]
fn overwriting_replaces_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.ckpt");
    write_checkpoint(&path, &json!({"step": 1}), &[("w", &[1.0])]).unwrap();
    write_checkpoint(&path, &json!({"step": 2}), &[("w", &[2.0])]).unwrap();
    let data = read_checkpoint(&path).unwrap();
    assert_eq!(data.header, json!({"step": 2}));
    assert_eq!(data.tensors, vec![("w".to_owned(), vec![2.0])]);
    let entries = fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, 1, "no temporary file left behind");
}

#[test]
fn truncation_at_every_offset_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = small_checkpoint(dir.path());
    for len in 0..bytes.len() {
        let err = read_bytes(dir.path(), &bytes[..len]).unwrap_err();
        assert!(
            matches!(
                err,
                CheckpointError::Truncated { .. }
                    | CheckpointError::NotACheckpoint { .. }
                    | CheckpointError::Corrupted { .. }
            ),
            "truncated to {len} bytes: {err:?}"
        );
        assert_names_file(&err, "damaged.ckpt");
    }
}

#[test]
fn a_flipped_byte_anywhere_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = small_checkpoint(dir.path());
    for offset in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut damaged = bytes.clone();
            damaged[offset] ^= mask;
            let err = read_bytes(dir.path(), &damaged).unwrap_err();
            assert!(
                !matches!(
                    err,
                    CheckpointError::Io { .. } | CheckpointError::Mismatch { .. }
                ),
                "byte {offset} ^ {mask:#x}: {err:?}"
            );
            assert_names_file(&err, "damaged.ckpt");
        }
    }
    // Past the header, a flip leaves the structure intact: only the checksum sees it.
    let mut damaged = bytes.clone();
    let last_data_byte = bytes.len() - 33;
    damaged[last_data_byte] ^= 0x01;
    assert!(matches!(
        read_bytes(dir.path(), &damaged),
        Err(CheckpointError::Corrupted { .. })
    ));
}

#[test]
fn content_damage_is_reported_as_corruption_not_a_parse_error() {
    // Bad JSON and a bad name with a wrong checksum: the checksum speaks first.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = encode(1, b"{\"a\":1}", &[(b"w", 1, &[1.0])]);
    bytes[20] = b'!'; // the header's `{`
    assert!(matches!(
        read_bytes(dir.path(), &bytes),
        Err(CheckpointError::Corrupted { .. })
    ));
}

#[test]
fn sealed_but_invalid_content_is_a_typed_error() {
    // Correct checksums over content the writer would never produce.
    let dir = tempfile::tempdir().unwrap();
    let bad_json = encode(1, b"{not json", &[]);
    let err = read_bytes(dir.path(), &bad_json).unwrap_err();
    assert!(matches!(err, CheckpointError::Header { .. }), "{err:?}");
    assert_names_file(&err, "damaged.ckpt");

    let bad_name = encode(1, b"{}", &[(&[0xff, 0xfe], 0, &[])]);
    let err = read_bytes(dir.path(), &bad_name).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Corrupted { reason, .. } if reason.contains("UTF-8")),
        "{err:?}"
    );
}

#[test]
fn trailing_bytes_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = encode(1, b"{}", &[(b"w", 1, &[1.0])]);
    body.truncate(body.len() - 32);
    body.extend([0u8; 5]);
    let err = read_bytes(dir.path(), &seal(body)).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Corrupted { reason, .. } if reason.contains("5 unexpected bytes")),
        "{err:?}"
    );
}

#[test]
fn other_files_are_not_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    for bytes in [
        b"{\"step\": 3}".to_vec(),
        b"PK\x03\x04 a zip file, say".to_vec(),
        vec![0u8; 200],
        b"RGMN"
            .iter()
            .chain(b"XXXX")
            .copied()
            .chain([0u8; 100])
            .collect(),
        b"x".to_vec(),
    ] {
        let err = read_bytes(dir.path(), &bytes).unwrap_err();
        assert!(
            matches!(err, CheckpointError::NotACheckpoint { .. }),
            "{err:?}"
        );
        assert_names_file(&err, "damaged.ckpt");
    }
    // A prefix of the magic is the start of a checkpoint that was cut short.
    for bytes in [&b""[..], b"RGMN", b"RGMNCKPT"] {
        let err = read_bytes(dir.path(), bytes).unwrap_err();
        assert!(matches!(err, CheckpointError::Truncated { .. }), "{err:?}");
    }
}

#[test]
fn a_future_version_is_refused_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode(2, b"{}", &[]);
    let err = read_bytes(dir.path(), &bytes).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    // Even when the file is shorter than a version-1 checkpoint could be.
    let mut short = b"RGMNCKPT".to_vec();
    short.extend(7u32.to_le_bytes());
    let err = read_bytes(dir.path(), &short).unwrap_err();
    assert!(
        matches!(err, CheckpointError::UnsupportedVersion { found: 7, .. }),
        "{err:?}"
    );
}

#[test]
fn huge_bogus_lengths_fail_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // Each of these would ask for exabytes if believed; the test would abort on OOM.
    let mut header_len = encode(1, b"{}", &[]);
    header_len[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut tensor_count = encode(1, b"{}", &[]);
    tensor_count[22..30].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let name_len = encode(1, b"{}", &[(b"w", 0, &[])]);
    let mut name_len = name_len;
    name_len[30..34].copy_from_slice(&u32::MAX.to_le_bytes());
    let element_count = encode(1, b"{}", &[(b"w", 1 << 60, &[1.0])]);
    let overflowing_count = encode(1, b"{}", &[(b"w", u64::MAX, &[1.0])]);

    for (what, bytes) in [
        ("header length", header_len),
        ("tensor count", tensor_count),
        ("name length", name_len),
        ("element count", element_count),
    ] {
        let err = read_bytes(dir.path(), &bytes).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Truncated { .. }),
            "{what}: {err:?}"
        );
    }
    let err = read_bytes(dir.path(), &overflowing_count).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupted { .. }), "{err:?}");
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.ckpt");
    let err = read_checkpoint(&path).unwrap_err();
    assert!(matches!(&err, CheckpointError::Io { path: p, .. } if p == &path));
    assert_names_file(&err, "nowhere.ckpt");
}

#[test]
fn writing_into_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("run.ckpt");
    let err = write_checkpoint(&path, &json!({}), &[("w", &[1.0])]).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Io { path: p, .. } if p == &path),
        "{err:?}"
    );
    assert_names_file(&err, "run.ckpt");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn failed_rename_leaves_no_temporary_file() {
    // The target is a non-empty directory: the temporary file is written and synced,
    // then the rename fails.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("run.ckpt");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), b"precious").unwrap();

    let err = write_checkpoint(&target, &json!({}), &[("w", &[1.0])]).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err:?}");
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("run.ckpt")]);
    assert_eq!(fs::read(target.join("keep")).unwrap(), b"precious");
}
