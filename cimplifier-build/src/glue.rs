//! The rule for glue binaries: they run inside partitions that keep only
//! what their own executables used, so they may need nothing from the
//! image. A binary with a program interpreter (PT_INTERP) or a needed
//! library (DT_NEEDED) fails there ("error while loading shared
//! libraries: libgcc_s.so.1") unless the partition happens to keep them.

use std::fmt;

use goblin::elf::Elf;

/// The glue binaries, by the name cargo gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GlueBinary {
    Stub,
    Server,
    /// Fills a Kubernetes pod's empty volumes from the seed image.
    Seed,
}

impl GlueBinary {
    pub const ALL: [GlueBinary; 3] = [GlueBinary::Stub, GlueBinary::Server, GlueBinary::Seed];

    /// The binary target's name in `cimplifier-rpe`.
    pub fn file_name(self) -> &'static str {
        match self {
            GlueBinary::Stub => "cimplifier-rpe-stub",
            GlueBinary::Server => "cimplifier-rpe-server",
            GlueBinary::Seed => "cimplifier-seed",
        }
    }
}

impl fmt::Display for GlueBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// Why a binary cannot be glue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotStatic {
    /// goblin could not read it as ELF.
    NotElf(String),
    /// It would need the image's dynamic loader or libraries.
    Dynamic {
        interpreter: Option<String>,
        needed: Vec<String>,
    },
}

impl fmt::Display for NotStatic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotStatic::NotElf(e) => write!(f, "it is not an ELF executable ({e})"),
            NotStatic::Dynamic {
                interpreter,
                needed,
            } => {
                f.write_str("it is dynamically linked (")?;
                if let Some(interp) = interpreter {
                    write!(f, "PT_INTERP {interp}")?;
                    if !needed.is_empty() {
                        f.write_str("; ")?;
                    }
                }
                if !needed.is_empty() {
                    write!(f, "DT_NEEDED {}", needed.join(", "))?;
                }
                f.write_str(
                    "), so it would not start in a partition that lacks those files; \
                     glue must be static (glibc +crt-static, see docs/rpe.md)",
                )
            }
        }
    }
}

impl std::error::Error for NotStatic {}

/// Ok when `bytes` are an ELF file with neither PT_INTERP nor DT_NEEDED
/// (a static or static-pie executable).
pub fn check_static(bytes: &[u8]) -> Result<(), NotStatic> {
    let elf = Elf::parse(bytes).map_err(|e| NotStatic::NotElf(e.to_string()))?;
    if elf.interpreter.is_none() && elf.libraries.is_empty() {
        return Ok(());
    }
    Err(NotStatic::Dynamic {
        interpreter: elf.interpreter.map(str::to_owned),
        needed: elf.libraries.iter().map(|l| (*l).to_owned()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_is_refused_with_its_loader_and_libraries() {
        let bytes = std::fs::read("/bin/true").unwrap();
        let err = check_static(&bytes).unwrap_err();
        let NotStatic::Dynamic {
            interpreter,
            needed,
        } = &err
        else {
            panic!("{err}");
        };
        assert!(
            interpreter
                .as_deref()
                .is_some_and(|i| i.contains("ld-linux"))
        );
        assert!(
            needed.iter().any(|l| l.starts_with("libc.so")),
            "{needed:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("PT_INTERP") && text.contains("libc.so"),
            "{text}"
        );
    }

    #[test]
    fn a_file_that_is_not_elf_is_refused() {
        assert!(matches!(
            check_static(b"#!/bin/sh\nexit 0\n"),
            Err(NotStatic::NotElf(_))
        ));
    }
}
