//! How fast the simulator serves a backup, with a host that writes nothing:
//! it answers every DeviceLink request and throws the file data away.
//!
//!   cargo run --release --example sim_throughput -- DEVICE_DIR
//!
//! Prints bytes, files, seconds and MB/s for one forced full backup.

use std::io::Read;
use std::time::Instant;

use ibackup_proto::devicelink::DlMessage;
use ibackup_proto::frame;
use ibackup_proto::mb2::{self, FileStreamReader, FileStreamWriter, Mb2Request, StreamItem};
use ibackup_proto::plistx::DictExt;
use ibackup_proto::usbmux::SocketAddress;
use ibackup_transport::MuxClient;
use plist::{Dictionary, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: sim_throughput DEVICE_DIR")?;
    let device = ibackup_sim::Device::open(std::path::Path::new(&dir), 1)?;
    let addr = ibackup_sim::usbmuxd::spawn_loopback(ibackup_sim::usbmuxd::Mux::new(vec![device])?)?;
    let mux = MuxClient::new(SocketAddress::Tcp(addr));
    let dev = ibackup_engine::device::choose(&mux, None, false)?;
    let mut session =
        ibackup_engine::device::open(&mux, &dev, std::time::Duration::from_secs(5), &mut || {})?;
    let mut s = session.service(mb2::SERVICE_NAME)?;
    let send = |s: &mut Box<dyn ibackup_transport::Stream>, m: DlMessage| {
        frame::write_binary(s, &m.encode())
    };
    let recv = |s: &mut Box<dyn ibackup_transport::Stream>| -> Result<DlMessage, ibackup_proto::ProtoError> { DlMessage::decode(frame::read_plist(s)?) };
    mb2::host_hello(&mut s)?
        .map_err(|(code, text)| format!("device refused Hello: {text} ({code})"))?;
    let req = Mb2Request::backup(&dev.udid, true);
    send(&mut s, DlMessage::ProcessMessage(req.encode()))?;
    let ok = || DlMessage::status_ok(Value::Dictionary(Dictionary::new()));
    let start = Instant::now();
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match recv(&mut s)? {
            DlMessage::UploadFiles { .. } => {
                loop {
                    let mut r = FileStreamReader::new(&mut s);
                    if r.name()? == StreamItem::End {
                        break;
                    }
                    r.name()?;
                    loop {
                        let h = FileStreamReader::new(&mut s).block_header()?;
                        if h.code != mb2::CODE_FILE_DATA {
                            FileStreamReader::new(&mut s).text(h.len)?;
                            break;
                        }
                        let mut left = h.len as usize;
                        while left > 0 {
                            let n = left.min(buf.len());
                            s.read_exact(&mut buf[..n])?;
                            left -= n;
                        }
                        bytes += h.len as u64;
                    }
                    files += 1;
                }
                send(&mut s, ok())?;
            }
            DlMessage::DownloadFiles { paths, .. } => {
                for p in &paths {
                    let mut w = FileStreamWriter::new(&mut s);
                    w.name(p)?;
                    w.error(mb2::CODE_ERROR_LOCAL, "No such file or directory")?;
                }
                FileStreamWriter::new(&mut s).terminate()?;
                send(&mut s, ok())?;
            }
            DlMessage::GetFreeDiskSpace => {
                send(&mut s, DlMessage::status_ok(Value::from(u64::MAX / 2)))?
            }
            DlMessage::ProcessMessage(d) => {
                let secs = start.elapsed().as_secs_f64();
                println!(
                    "result {}: {files} files, {bytes} bytes in {secs:.2} s = {:.0} MB/s, {:.0} files/s",
                    d.u64_of("ErrorCode").unwrap_or(0),
                    bytes as f64 / 1e6 / secs,
                    files as f64 / secs
                );
                return Ok(());
            }
            _ => send(&mut s, ok())?,
        }
    }
}
