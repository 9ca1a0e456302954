//! The syscall ABIs: how the tracer's syscall numbers are named, for the
//! events (`syscall_seen`) and for the seccomp profiles place writes.

use serde::{Deserialize, Serialize};

/// A syscall ABI the tracer numbers calls in and a profile is written
/// for. Only x86_64 is traced today; arm64 needs its own tables here and
/// the tracer's numbers for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arch {
    X86_64,
}

impl Arch {
    /// The syscall's name for number `nr`, from the kernel's table as the
    /// `syscalls` crate carries it.
    pub fn name(self, nr: u32) -> Option<&'static str> {
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::new(nr as usize).map(|s| s.name()),
        }
    }

    /// The number of the syscall `name`.
    pub fn number(self, name: &str) -> Option<u32> {
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::iter()
                .find(|s| s.name() == name)
                .map(|s| s.id() as u32),
        }
    }

    /// libseccomp's name for it. Only the native ABI is listed: 32-bit
    /// (x86, x32) calls are refused as a whole.
    pub fn scmp(self) -> &'static str {
        match self {
            Arch::X86_64 => "SCMP_ARCH_X86_64",
        }
    }
}
