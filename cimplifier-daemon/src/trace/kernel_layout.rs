//! Struct offsets and tracepoint field offsets of the running kernel.
//!
//! Rust eBPF code has no CO-RE field relocations, so the loader reads the few
//! offsets the programs need from `/sys/kernel/btf/vmlinux` and from tracefs
//! and hands them to the programs as read-only globals. The same object then
//! works on any kernel with BTF.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use btf_rs::{Btf, Type};

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
    pub mm_arg_start: u64,
    pub mm_arg_end: u64,
}

impl KernelLayout {
    pub fn read() -> Result<Self> {
        let btf = Btf::from_file(VMLINUX_BTF).with_context(|| {
            format!("reading kernel BTF from {VMLINUX_BTF}: the kernel needs CONFIG_DEBUG_INFO_BTF")
        })?;
        Ok(Self {
            task_real_parent: member_offset(&btf, "task_struct", "real_parent")?,
            task_tgid: member_offset(&btf, "task_struct", "tgid")?,
            fork_child_pid: tracepoint_field_offset("sched", "sched_process_fork", "child_pid")?,
            exit_group_dead: tracepoint_field_offset("sched", "sched_process_exit", "group_dead")?,
            exec_filename: tracepoint_field_offset("sched", "sched_process_exec", "filename")?,
            exec_old_pid: tracepoint_field_offset("sched", "sched_process_exec", "old_pid")?,
            task_mm: member_offset(&btf, "task_struct", "mm")?,
            mm_arg_start: member_offset(&btf, "mm_struct", "arg_start")?,
            mm_arg_end: member_offset(&btf, "mm_struct", "arg_end")?,
        })
    }
}

/// Byte offset of `field` in `struct name`, looking through anonymous
/// structs and unions (6.x wraps some members in them).
pub fn member_offset(btf: &Btf, name: &str, field: &str) -> Result<u64> {
    let types = btf
        .resolve_types_by_name(name)
        .with_context(|| format!("kernel BTF has no type named {name}"))?;
    for ty in types {
        if let Type::Struct(s) = ty
            && let Some(bits) = find_member(btf, &s.members, field)?
        {
            if bits % 8 != 0 {
                bail!("{name}.{field} is a bitfield (bit offset {bits}); cannot read it");
            }
            return Ok(u64::from(bits / 8));
        }
    }
    Err(anyhow!("kernel BTF: struct {name} has no member {field}"))
}

fn find_member(btf: &Btf, members: &[btf_rs::Member], field: &str) -> Result<Option<u32>> {
    for m in members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        if member_name == field {
            return Ok(Some(m.bit_offset()));
        }
        if member_name.is_empty() {
            let inner = btf.resolve_chained_type(m)?;
            if let Type::Struct(s) | Type::Union(s) = inner
                && let Some(bits) = find_member(btf, &s.members, field)?
            {
                return Ok(Some(m.bit_offset() + bits));
            }
        }
    }
    Ok(None)
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
    fn reads_this_kernels_layout() {
        let layout =
            KernelLayout::read().expect("kernel BTF and tracefs (run `cargo xtask setup`)");
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        // 6.x keeps f_path inside an anonymous union: found through it.
        let f_path = member_offset(&btf, "file", "f_path").unwrap();
        assert!(f_path > 0 && f_path < 512, "file.f_path at {f_path}");
        assert!(member_offset(&btf, "file", "no_such_member").is_err());
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
    }
}
