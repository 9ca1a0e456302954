//! Struct offsets and tracepoint field offsets of the running kernel.
//!
//! Rust eBPF code has no CO-RE field relocations, so the loader reads the few
//! offsets the programs need from `/sys/kernel/btf/vmlinux` and from tracefs
//! and hands them to the programs as read-only globals. The same object then
//! works on any kernel with BTF.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// The values behind `cimplifier_common::globals`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    pub task_real_parent: u64,
    pub task_tgid: u64,
    pub fork_child_pid: u64,
    pub exit_group_dead: u64,
    /// sched_process_exec's `filename` (a `__data_loc` word) and `old_pid`.
    pub exec_filename: u64,
    pub exec_old_pid: u64,
    pub task_mm: u64,
    /// `linux_binprm.buf`: the loaded image's first bytes (its ELF header).
    pub bprm_buf: u64,
    pub mm_arg_start: u64,
    pub mm_arg_end: u64,
    /// `task_struct.cred` and `.real_cred`, and `cred.uid`, `.suid` and
    /// `.euid` (each a `kuid_t`, one `uid_t`): a signal's two sides.
    pub task_cred: u64,
    pub task_real_cred: u64,
    pub cred_uid: u64,
    pub cred_suid: u64,
    pub cred_euid: u64,
    /// `kernel_siginfo.si_code`, inside an anonymous struct.
    pub siginfo_code: u64,
}

impl KernelLayout {
    pub fn read() -> Result<Self> {
        let btf = KernelTypes::read(Path::new(VMLINUX_BTF))?;
        Ok(Self {
            task_real_parent: btf.member_offset("task_struct", "real_parent")?,
            task_tgid: btf.member_offset("task_struct", "tgid")?,
            fork_child_pid: tracepoint_field_offset("sched", "sched_process_fork", "child_pid")?,
            exit_group_dead: tracepoint_field_offset("sched", "sched_process_exit", "group_dead")?,
            exec_filename: tracepoint_field_offset("sched", "sched_process_exec", "filename")?,
            exec_old_pid: tracepoint_field_offset("sched", "sched_process_exec", "old_pid")?,
            task_mm: btf.member_offset("task_struct", "mm")?,
            bprm_buf: btf.member_offset("linux_binprm", "buf")?,
            mm_arg_start: btf.member_offset("mm_struct", "arg_start")?,
            mm_arg_end: btf.member_offset("mm_struct", "arg_end")?,
            task_cred: btf.member_offset("task_struct", "cred")?,
            task_real_cred: btf.member_offset("task_struct", "real_cred")?,
            cred_uid: btf.member_offset("cred", "uid")?,
            cred_suid: btf.member_offset("cred", "suid")?,
            cred_euid: btf.member_offset("cred", "euid")?,
            siginfo_code: btf.member_offset("kernel_siginfo", "si_code")?,
        })
    }
}

/// The kernel's BTF type information.
pub struct KernelTypes(btfparse::TypeInformation);

/// A BTF blob in memory, as btfparse reads it.
struct Blob(Vec<u8>);

impl btfparse::Readable for Blob {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let bytes = start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| {
                btfparse::Error::new(btfparse::ErrorKind::EOF, "read past the end of the BTF")
            })?;
        buffer.copy_from_slice(bytes);
        Ok(())
    }
}

impl KernelTypes {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "reading kernel BTF from {}: the kernel needs CONFIG_DEBUG_INFO_BTF",
                path.display()
            )
        })?;
        Self::parse(bytes).with_context(|| format!("parsing kernel BTF from {}", path.display()))
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        btfparse::TypeInformation::new(&Blob(bytes))
            .map(Self)
            .map_err(|e| anyhow!("{e:?}"))
    }

    /// Byte offset of `field` in `struct name`, looking through anonymous
    /// structs and unions (6.x wraps some members in them).
    pub fn member_offset(&self, name: &str, field: &str) -> Result<u64> {
        let id = self
            .0
            .id_of(name)
            .with_context(|| format!("kernel BTF has no type named {name}"))?;
        match self.0.offset_of(id, field) {
            Ok((_, btfparse::Offset::ByteOffset(bytes))) => Ok(u64::from(bytes)),
            Ok((_, btfparse::Offset::BitOffsetAndSize(bits, _))) => {
                bail!("{name}.{field} is a bitfield (bit offset {bits}); cannot read it")
            }
            Err(e) => Err(anyhow!(
                "kernel BTF: struct {name} has no member {field} ({e:?})"
            )),
        }
    }
}

/// Offset of `field` in a tracepoint's record, from its tracefs format file.
pub fn tracepoint_field_offset(category: &str, event: &str, field: &str) -> Result<u64> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}: is tracefs mounted? (`mount -t tracefs nodev {TRACEFS}`)",
            path.display()
        )
    })?;
    parse_field_offset(&text, field)
        .ok_or_else(|| anyhow!("{} has no field {field}", path.display()))
}

fn parse_field_offset(format: &str, field: &str) -> Option<u64> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        let offset = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        offset.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK: &str = "name: sched_process_fork
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";

    const EXEC: &str = "name: sched_process_exec
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;
";

    #[test]
    fn finds_tracepoint_fields() {
        assert_eq!(parse_field_offset(FORK, "child_pid"), Some(20));
        assert_eq!(parse_field_offset(FORK, "parent_comm"), Some(8));
        assert_eq!(parse_field_offset(FORK, "child"), None);
        assert_eq!(parse_field_offset(EXEC, "filename"), Some(8));
        assert_eq!(parse_field_offset(EXEC, "old_pid"), Some(16));
        assert_eq!(parse_field_offset(EXEC, "pid"), Some(12));
    }

    #[test]
    fn a_truncated_or_foreign_btf_is_an_error_not_a_panic() {
        assert!(KernelTypes::parse(Vec::new()).is_err());
        assert!(KernelTypes::parse(vec![0xff; 64]).is_err());
        let whole = std::fs::read(VMLINUX_BTF).expect("kernel BTF (CONFIG_DEBUG_INFO_BTF)");
        for cut in [24, 4096, whole.len() / 2] {
            assert!(
                KernelTypes::parse(whole[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn reads_this_kernels_layout() {
        let layout =
            KernelLayout::read().expect("kernel BTF and tracefs (run `cargo xtask setup`)");
        let btf = KernelTypes::read(Path::new(VMLINUX_BTF)).unwrap();
        // 6.x keeps f_path inside an anonymous union: found through it.
        let f_path = btf.member_offset("file", "f_path").unwrap();
        assert!(f_path > 0 && f_path < 512, "file.f_path at {f_path}");
        assert!(btf.member_offset("file", "no_such_member").is_err());
        assert!(
            layout.task_tgid > 0 && layout.task_real_parent > layout.task_tgid,
            "{layout:?}"
        );
        assert!(layout.fork_child_pid >= 8, "{layout:?}");
        assert!(layout.exec_old_pid >= 8, "{layout:?}");
        assert!(
            layout.task_mm > 0 && layout.mm_arg_end == layout.mm_arg_start + 8,
            "{layout:?}"
        );
        // struct cred: usage, then uid, gid, suid, sgid, euid (4 bytes each).
        assert_eq!(layout.cred_suid, layout.cred_uid + 8, "{layout:?}");
        assert_eq!(layout.cred_euid, layout.cred_uid + 16, "{layout:?}");
        assert_eq!(layout.task_cred, layout.task_real_cred + 8, "{layout:?}");
        // si_signo, si_errno, si_code.
        assert_eq!(layout.siginfo_code, 8, "{layout:?}");
    }
}
