//! Services started through lockdownd, each on its own connection.

use std::sync::Arc;

use crate::conn::Conn;
use crate::device::Device;
use crate::error::{Result, SimError};

pub mod afc;
pub mod backup;
pub mod misc;
pub mod restore;

pub fn serve(service: &str, conn: Box<dyn Conn>, device: Arc<Device>) -> Result<()> {
    log::debug!("service {service} connected");
    match service {
        ibackup_proto::mb2::SERVICE_NAME => backup::serve(conn, device),
        ibackup_proto::afc::SERVICE_NAME => afc::serve(conn, device),
        ibackup_proto::services::NOTIFICATION_PROXY => misc::notification_proxy(conn),
        ibackup_proto::services::INSTALLATION_PROXY => misc::installation_proxy(conn, device),
        ibackup_proto::services::SPRINGBOARD => misc::springboard(conn),
        other => Err(SimError::Protocol(format!("no such service {other}"))),
    }
}
