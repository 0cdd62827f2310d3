//! The checkpoint file format: a JSON header (whatever the stepper records: the
//! script's fingerprint, step counters, optimizer scalars, the loss scaler…) followed
//! by named f32 tensors (master weights, optimizer moments), sealed by a checksum.
//! This module only reads and writes the container; the stepper decides what goes in
//! and reports what does not fit with [`CheckpointError::Mismatch`]. Opaque bytes (a
//! gradient compressor's saved state) are stored by the stepper as an f32 tensor of
//! exact integers, three bytes per element (see the stepper's compression module), so
//! the container needs no byte-blob records and keeps format version 1.
//!
//! # Layout (version 1)
//!
//! All integers are little-endian.
//!
//! | bytes          | content                                                      |
//! |----------------|--------------------------------------------------------------|
//! | 8              | magic `RGMNCKPT`                                             |
//! | 4              | format version, `u32` ([`CHECKPOINT_FORMAT_VERSION`])        |
//! | 8              | header length in bytes, `u64`                                |
//! | header length  | header, JSON in UTF-8                                        |
//! | 8              | tensor count, `u64`                                          |
//! | per tensor: 4  | name length in bytes, `u32`                                  |
//! | name length    | name, UTF-8                                                  |
//! | 8              | element count, `u64`                                         |
//! | 4 × count      | elements, `f32` (bit patterns kept: NaN payloads, −0.0)      |
//! | 32             | SHA-256 of every byte before it                              |
//!
//! # Reading
//!
//! The file is streamed, never loaded whole. Every length is checked against the bytes
//! left in the file *before* anything is allocated for it, so a damaged length field
//! fails with a typed error instead of an enormous allocation. The header's JSON and
//! the names' UTF-8 are only interpreted once the checksum has matched, so damage
//! anywhere in the content is reported as [`CheckpointError::Corrupted`] rather than as
//! a confusing parse error. Every error names the file.
//!
//! # Writing
//!
//! Atomic: the bytes go to `.NAME.tmp-PID` in the target's directory, which is flushed
//! to disk (`sync_all`) and renamed over the target, and then the directory itself is
//! synced (best effort: not every platform can open a directory) so the rename
//! survives a crash. On any failure the temporary file is removed and an existing
//! checkpoint at the target is left as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

/// The format version this build writes and reads.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// The first bytes of every checkpoint.
const MAGIC: &[u8; 8] = b"RGMNCKPT";
/// Length of the SHA-256 trailer.
const CHECKSUM_LEN: u64 = 32;
/// Smallest possible tensor record: a name length and an element count.
const MIN_TENSOR_RECORD: u64 = 4 + 8;
/// Bytes read or written per chunk of tensor data.
const CHUNK_BYTES: usize = 64 * 1024;

/// Why a checkpoint could not be written or read. Every variant names the file.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The file system failed.
    #[error("checkpoint {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file does not start with the checkpoint magic.
    #[error("{} is not a Regimen checkpoint (it does not start with `RGMNCKPT`)", path.display())]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
    },
    /// The format version is not one this build reads.
    #[error("checkpoint {} has format version {found}, but this build reads version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file ends before its content does.
    #[error("checkpoint {} is truncated: {what}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read, and how much was missing.
        what: String,
    },
    /// The content is damaged (checksum mismatch, impossible length, trailing bytes).
    #[error("checkpoint {} is corrupted: {reason}", path.display())]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The header is not valid JSON, or cannot be encoded.
    #[error("checkpoint {}: invalid header: {message}", path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint is intact but does not fit the run loading it (another script,
    /// an unknown parameter, a different shape). Raised by the stepper.
    #[error("checkpoint {} does not match this run: {reason}", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
}

/// The content of a checkpoint file.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointData {
    /// The JSON header.
    pub header: serde_json::Value,
    /// Named f32 tensors, in file order.
    pub tensors: Vec<(String, Vec<f32>)>,
}

/// Writes a checkpoint atomically (format and guarantees in the module documentation).
pub fn write_checkpoint(
    path: &Path,
    header: &serde_json::Value,
    tensors: &[(&str, &[f32])],
) -> Result<(), CheckpointError> {
    let header_bytes = serde_json::to_vec(header).map_err(|error| CheckpointError::Header {
        path: path.to_owned(),
        message: error.to_string(),
    })?;
    if let Some((name, _)) = tensors
        .iter()
        .find(|(name, _)| u32::try_from(name.len()).is_err())
    {
        return Err(CheckpointError::Io {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a tensor name of {} bytes does not fit the format",
                    name.len()
                ),
            ),
        });
    }
    write_atomically(path, |out| {
        let mut out = Hashing::new(out);
        out.write_all(MAGIC)?;
        out.write_all(&CHECKPOINT_FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
        out.write_all(&header_bytes)?;
        out.write_all(&(tensors.len() as u64).to_le_bytes())?;
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        for (name, data) in tensors {
            // Checked above: every name length fits a u32.
            out.write_all(&(name.len() as u32).to_le_bytes())?;
            out.write_all(name.as_bytes())?;
            out.write_all(&(data.len() as u64).to_le_bytes())?;
            for values in data.chunks(CHUNK_BYTES / 4) {
                chunk.clear();
                chunk.extend(values.iter().flat_map(|value| value.to_le_bytes()));
                out.write_all(&chunk)?;
            }
        }
        let (inner, digest) = out.finish();
        inner.write_all(&digest)
    })
}

/// Reads and validates a checkpoint (checks in the module documentation).
pub fn read_checkpoint(path: &Path) -> Result<CheckpointData, CheckpointError> {
    let io_error = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    let mut reader = CheckpointReader {
        path,
        input: Hashing::new(BufReader::new(file)),
        // Everything before the checksum.
        left: size.saturating_sub(CHECKSUM_LEN),
        size,
    };

    // The magic first, so that any other file is "not a checkpoint", even a short one.
    let mut magic = [0u8; 8];
    let available = usize::try_from(size.min(8)).unwrap_or(8);
    reader
        .input
        .read_exact(&mut magic[..available])
        .map_err(|error| reader.read_error(error, "the magic"))?;
    if magic[..available] != MAGIC[..available] {
        return Err(CheckpointError::NotACheckpoint {
            path: path.to_owned(),
        });
    }
    if available < MAGIC.len() {
        return Err(reader.truncated(format!(
            "the file is {size} bytes long, shorter than the magic"
        )));
    }
    reader.left = reader.left.saturating_sub(8);
    if size < 8 + 4 + 8 + 8 + CHECKSUM_LEN {
        // Read the version anyway if it is there: a newer format may be shorter.
        if size >= 12 {
            let version = reader.u32_unchecked()?;
            if version != CHECKPOINT_FORMAT_VERSION {
                return Err(reader.unsupported(version));
            }
        }
        return Err(reader.truncated(format!(
            "the file is {size} bytes long, shorter than the smallest checkpoint"
        )));
    }
    let version = reader.u32("the format version")?;
    if version != CHECKPOINT_FORMAT_VERSION {
        return Err(reader.unsupported(version));
    }

    let header_len = reader.u64("the header length")?;
    let header_bytes = reader.bytes(header_len, "the header")?;
    let tensor_count = reader.u64("the tensor count")?;
    if tensor_count > reader.left / MIN_TENSOR_RECORD {
        return Err(reader.truncated(format!(
            "it declares {tensor_count} tensors, but only {} bytes of tensor data remain",
            reader.left
        )));
    }
    // The count is only a claim until the records are read: reserve modestly.
    let mut raw_tensors = Vec::with_capacity(usize::try_from(tensor_count.min(1024)).unwrap_or(0));
    for index in 0..tensor_count {
        let name_len = reader.u32(&format!("the name length of tensor {index}"))?;
        let name = reader.bytes(u64::from(name_len), &format!("the name of tensor {index}"))?;
        let count = reader.u64(&format!("the element count of tensor {index}"))?;
        let data = reader.f32s(count, index)?;
        raw_tensors.push((name, data));
    }
    if reader.left > 0 {
        return Err(CheckpointError::Corrupted {
            path: path.to_owned(),
            reason: format!(
                "{} unexpected bytes between the last tensor and the checksum",
                reader.left
            ),
        });
    }

    let (mut rest, computed) = reader.input.finish();
    let mut stored = [0u8; CHECKSUM_LEN as usize];
    rest.read_exact(&mut stored).map_err(|error| {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            CheckpointError::Truncated {
                path: path.to_owned(),
                what: "the checksum is missing".to_owned(),
            }
        } else {
            io_error(error)
        }
    })?;
    if stored != computed {
        return Err(CheckpointError::Corrupted {
            path: path.to_owned(),
            reason: "the SHA-256 checksum does not match the content".to_owned(),
        });
    }

    // The checksum vouches for the bytes; now interpret them.
    let header =
        serde_json::from_slice(&header_bytes).map_err(|error| CheckpointError::Header {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
    let tensors = raw_tensors
        .into_iter()
        .enumerate()
        .map(|(index, (name, data))| match String::from_utf8(name) {
            Ok(name) => Ok((name, data)),
            Err(_) => Err(CheckpointError::Corrupted {
                path: path.to_owned(),
                reason: format!("the name of tensor {index} is not UTF-8"),
            }),
        })
        .collect::<Result<_, _>>()?;
    Ok(CheckpointData { header, tensors })
}

/// Writes through `write_body` into a temporary file next to `path`, then moves it over
/// `path`; on any failure removes the temporary file and leaves `path` untouched.
fn write_atomically(
    path: &Path,
    write_body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), CheckpointError> {
    let io_error = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let Some(file_name) = path.file_name() else {
        return Err(io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path does not name a file",
        )));
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp_path = directory.join(temp_name);

    let written = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp_path)?;
        let mut out = BufWriter::new(file);
        write_body(&mut out)?;
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp_path, path)
    })();
    if let Err(error) = written {
        // The original error matters; a failed cleanup of a file that may not even
        // exist does not.
        let _ = fs::remove_file(&temp_path);
        return Err(io_error(error));
    }
    // Make the rename itself durable. Best effort: some platforms cannot open or sync
    // a directory, and the checkpoint is already in place.
    if let Ok(dir) = File::open(directory) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A writer or reader that hashes every byte that goes through it.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The inner writer or reader and the digest of every byte so far.
    fn finish(self) -> (T, [u8; 32]) {
        (self.inner, self.hasher.finalize().into())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

/// The read side: every field read checks the bytes left before the checksum.
struct CheckpointReader<'a> {
    path: &'a Path,
    input: Hashing<BufReader<File>>,
    /// Bytes left before the checksum trailer.
    left: u64,
    /// Size of the whole file.
    size: u64,
}

impl CheckpointReader<'_> {
    fn truncated(&self, what: String) -> CheckpointError {
        CheckpointError::Truncated {
            path: self.path.to_owned(),
            what,
        }
    }

    fn unsupported(&self, found: u32) -> CheckpointError {
        CheckpointError::UnsupportedVersion {
            path: self.path.to_owned(),
            found,
            supported: CHECKPOINT_FORMAT_VERSION,
        }
    }

    /// An I/O error while reading `what`; an early end of file (the file shrank while
    /// being read) counts as truncation.
    fn read_error(&self, error: io::Error, what: &str) -> CheckpointError {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            self.truncated(format!("the file ends inside {what}"))
        } else {
            CheckpointError::Io {
                path: self.path.to_owned(),
                source: error,
            }
        }
    }

    /// Reserves `len` bytes for `what`, failing if they are not in the file.
    fn take(&mut self, len: u64, what: &str) -> Result<(), CheckpointError> {
        if len > self.left {
            return Err(self.truncated(format!(
                "{what} needs {len} bytes, but only {} remain before the checksum of a {}-byte file",
                self.left, self.size
            )));
        }
        self.left -= len;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CheckpointError> {
        self.take(N as u64, what)?;
        let mut bytes = [0u8; N];
        self.input
            .read_exact(&mut bytes)
            .map_err(|error| self.read_error(error, what))?;
        Ok(bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, CheckpointError> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// The version of a file too short to hold a checkpoint (it still has 4 bytes
    /// after the magic, possibly in the checksum's place).
    fn u32_unchecked(&mut self) -> Result<u32, CheckpointError> {
        let mut bytes = [0u8; 4];
        self.input
            .read_exact(&mut bytes)
            .map_err(|error| self.read_error(error, "the format version"))?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self, what: &str) -> Result<u64, CheckpointError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn bytes(&mut self, len: u64, what: &str) -> Result<Vec<u8>, CheckpointError> {
        self.take(len, what)?;
        // `take` bounded `len` by the file size, which fits in memory's address space
        // on every platform a checkpoint this large could have been written on.
        let len =
            usize::try_from(len).map_err(|_| self.truncated(format!("{what} is too large")))?;
        let mut bytes = vec![0u8; len];
        self.input
            .read_exact(&mut bytes)
            .map_err(|error| self.read_error(error, what))?;
        Ok(bytes)
    }

    fn f32s(&mut self, count: u64, index: u64) -> Result<Vec<f32>, CheckpointError> {
        let what = format!("the data of tensor {index}");
        let Some(len) = count.checked_mul(4) else {
            return Err(CheckpointError::Corrupted {
                path: self.path.to_owned(),
                reason: format!("tensor {index} declares an impossible {count} elements"),
            });
        };
        self.take(len, &what)?;
        let count =
            usize::try_from(count).map_err(|_| self.truncated(format!("{what} is too large")))?;
        let mut values = Vec::with_capacity(count);
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut remaining = count * 4;
        while remaining > 0 {
            let bytes = &mut chunk[..remaining.min(CHUNK_BYTES)];
            self.input
                .read_exact(bytes)
                .map_err(|error| self.read_error(error, &what))?;
            values.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            remaining -= bytes.len();
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A failure injected halfway through writing leaves the existing checkpoint and
    /// no temporary file behind.
    #[test]
    fn failed_write_keeps_the_existing_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.ckpt");
        let header = serde_json::json!({"step": 7});
        write_checkpoint(&path, &header, &[("w", &[1.0, 2.0])]).unwrap();
        let before = fs::read(&path).unwrap();

        let err = write_atomically(&path, |out| {
            out.write_all(b"half a checkpoint")?;
            Err(io::Error::other("disk full (injected)"))
        })
        .unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Io { path: p, .. } if p == &path),
            "{err}"
        );
        assert!(err.to_string().contains("disk full (injected)"));

        assert_eq!(fs::read(&path).unwrap(), before);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("run.ckpt")]);
        let data = read_checkpoint(&path).unwrap();
        assert_eq!(data.header, header);
    }

    #[test]
    fn temporary_file_name_is_hidden_next_to_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ckpt");
        let mut seen = None;
        write_atomically(&path, |_| {
            seen = Some(
                fs::read_dir(dir.path())
                    .unwrap()
                    .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                    .collect::<Vec<_>>(),
            );
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen.unwrap(),
            vec![format!(".a.ckpt.tmp-{}", std::process::id())]
        );
    }
}
