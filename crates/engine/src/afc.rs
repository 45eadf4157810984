//! An AFC conversation over one service connection: list folders, ask
//! about files, read them. Packets are built and decoded in
//! `ibackup_proto::afc`; this keeps the numbering and the I/O.

use ibackup_proto::afc::{self, mode, op, status, AfcPacket};
use ibackup_transport::Stream;

use crate::error::{EngineError, Result};

pub struct AfcClient {
    s: Box<dyn Stream>,
    packet: u64,
}

/// What GET_FILE_INFO says of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub size: u64,
    /// Nanoseconds since 1970.
    pub mtime_ns: u128,
    pub is_dir: bool,
    pub is_file: bool,
}

impl AfcClient {
    pub fn new(s: Box<dyn Stream>) -> AfcClient {
        AfcClient { s, packet: 0 }
    }

    pub fn call(&mut self, operation: u64, words: &[u64], path: Option<&str>) -> Result<AfcPacket> {
        self.packet += 1;
        afc::request(self.packet, operation, words, path).write(&mut self.s)?;
        Ok(AfcPacket::read(&mut self.s)?)
    }

    /// A STATUS answer's code (`None` for data).
    fn status_of(r: &AfcPacket) -> Option<u64> {
        (r.operation == op::STATUS).then(|| r.arg_u64(0).unwrap_or(u64::MAX))
    }

    /// The names in `path`; `None` when it does not exist.
    pub fn list(&mut self, path: &str) -> Result<Option<Vec<Vec<u8>>>> {
        let r = self.call(op::READ_DIR, &[], Some(path))?;
        match Self::status_of(&r) {
            None => Ok(Some(afc::decode_names(&r.data))),
            Some(status::OBJECT_NOT_FOUND) => Ok(None),
            Some(code) => Err(EngineError::Protocol(format!(
                "the device would not list {path} (AFC status {code})"
            ))),
        }
    }

    /// What the device says of `path`; `None` when it does not exist.
    pub fn info(&mut self, path: &str) -> Result<Option<FileInfo>> {
        let r = self.call(op::GET_FILE_INFO, &[], Some(path))?;
        match Self::status_of(&r) {
            None => {}
            Some(status::OBJECT_NOT_FOUND) => return Ok(None),
            Some(code) => {
                return Err(EngineError::Protocol(format!(
                    "the device would not describe {path} (AFC status {code})"
                )))
            }
        }
        let kv = afc::decode_kv(&r.data);
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let number = |k: &str| -> Result<u128> {
            get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
                EngineError::Protocol(format!(
                    "the device described {path} without a number for {k}"
                ))
            })
        };
        let size = u64::try_from(number("st_size")?)
            .map_err(|_| EngineError::Protocol(format!("{path}: a size beyond 2^64")))?;
        Ok(Some(FileInfo {
            size,
            mtime_ns: number("st_mtime")?,
            is_dir: get("st_ifmt") == Some("S_IFDIR"),
            is_file: get("st_ifmt") == Some("S_IFREG"),
        }))
    }

    /// Open `path` with `how` (`afc::mode`); `None` when the device refuses.
    pub fn open(&mut self, path: &str, how: u64) -> Result<Option<u64>> {
        let r = self.call(op::FILE_OPEN, &[how], Some(path))?;
        Ok(match (r.operation, r.arg_u64(0)) {
            (op::FILE_OPEN_RES, Some(h)) => Some(h),
            _ => None,
        })
    }

    /// Up to `n` bytes from an open file; empty at its end.
    pub fn read(&mut self, handle: u64, n: u64) -> Result<Vec<u8>> {
        let r = self.call(op::FILE_READ, &[handle, n], None)?;
        match Self::status_of(&r) {
            None => Ok(r.data),
            Some(status::SUCCESS) => Ok(Vec::new()),
            Some(code) => Err(EngineError::Protocol(format!(
                "the device stopped a file read (AFC status {code})"
            ))),
        }
    }

    pub fn close(&mut self, handle: u64) -> Result<()> {
        self.call(op::FILE_CLOSE, &[handle], None)?;
        Ok(())
    }

    /// A small file's contents whole (at most `limit` bytes); `None` when
    /// the device has no such file.
    pub fn read_small(&mut self, path: &str, limit: usize) -> Result<Option<Vec<u8>>> {
        let Some(handle) = self.open(path, mode::RDONLY)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        loop {
            let chunk = self.read(handle, 1 << 20)?;
            if chunk.is_empty() || out.len() + chunk.len() > limit {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        self.close(handle)?;
        Ok(Some(out))
    }
}
