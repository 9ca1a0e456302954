//! Attaching a tracepoint program through a perf event and the
//! `PERF_EVENT_IOC_SET_BPF` ioctl, as bpftrace does: on these kernels
//! `bpf_link_create` on the per-syscall tracepoints (`syscalls/*`) is
//! refused (EACCES), while the ioctl works. The program stays attached as
//! long as the event's descriptor is open.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use nix::libc;

use super::kernel_layout::TRACEFS;

/// `struct perf_event_attr` as of `PERF_ATTR_SIZE_VER0`: the kernel
/// reads the later fields as zero.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
// _IO('$', 0) and _IOW('$', 8, __u32).
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// The tracepoint `category/name`'s id, from tracefs.
pub fn tracepoint_id(category: &str, name: &str) -> Result<u64> {
    let file = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .join("id");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading the tracepoint id {}", file.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("tracepoint id {} is not a number: {text:?}", file.display()))
}

/// Runs `program` (a loaded tracepoint program) on every hit of the
/// tracepoint `id`, host-wide, until the returned descriptor is closed.
pub fn attach_tracepoint(program: BorrowedFd<'_>, id: u64) -> std::io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    // A tracepoint's programs run for every task on every CPU, whichever
    // CPU the event is opened on: one event is enough.
    let (pid, cpu, group): (libc::pid_t, libc::c_int, libc::c_int) = (-1, 0, -1);
    // SAFETY: attr is a valid perf_event_attr of the size it says.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            pid,
            cpu,
            group,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    let event = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    for (request, arg) in [
        (PERF_EVENT_IOC_SET_BPF, program.as_raw_fd() as libc::c_ulong),
        (PERF_EVENT_IOC_ENABLE, 0),
    ] {
        // SAFETY: both requests take an integer argument.
        if unsafe { libc::ioctl(event.as_raw_fd(), request as _, arg) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attribute_is_the_first_published_layout() {
        // PERF_ATTR_SIZE_VER0: a kernel takes any size from it up.
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 64);
    }
}
