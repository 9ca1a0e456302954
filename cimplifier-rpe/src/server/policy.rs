//! What a caller may ask for. Every caller partition may be compromised,
//! so everything in a request is hostile: the path, argv[0], the
//! environment and the fds are checked here before anything runs.

use crate::config::{FdKind, Permit};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// At most this many fds per call (the stub sends every open fd).
pub const MAX_FDS: usize = 1024;
/// Target fd numbers must lie below this (and below the server's own
/// RLIMIT_NOFILE): the callee's fd table is sized by the highest one.
pub const MAX_TARGET_FD: i32 = 1 << 20;

/// `path` with `.`, `..` and repeated slashes removed, without looking
/// at the file system: a symlink in the callee's tree must not make a
/// path that is not listed equal to one that is. `None` if not absolute.
pub fn normalise(path: &[u8]) -> Option<PathBuf> {
    if path.first() != Some(&b'/') {
        return None;
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for p in &parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Some(PathBuf::from(OsStr::from_bytes(&out)))
}

/// Whether a program allowed as `path` may be run with `argv0`. Multi-call
/// binaries (busybox, coreutils' single binary) pick their program by
/// the file name in argv[0], so a caller allowed `/bin/ls` must not run
/// it as `sh`. Allowed: argv[0] whose last component (one leading `-`
/// removed, as a login shell's) is the path's file name, or one of the
/// values `permit.argv0` lists for the path.
pub fn argv0_allowed(path: &Path, argv0: &[u8], permit: &Permit) -> bool {
    let name = path.file_name().map(OsStr::as_bytes).unwrap_or_default();
    let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
    let base = base.strip_prefix(b"-").unwrap_or(base);
    (!name.is_empty() && base == name)
        || permit
            .argv0
            .get(path)
            .is_some_and(|l| l.iter().any(|a| a.as_bytes() == argv0))
}

/// glibc's UNSECURE_ENVVARS (sysdeps/generic/unsecvars.h), which ld.so
/// removes for setuid programs: the callee runs with privileges the
/// caller lacks in the same way. `LD_` and `MALLOC_` go by prefix below.
const GLIBC_UNSECURE: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TMPDIR",
    "TZDIR",
];

/// Variables that make an interpreter or a library load or run code
/// named by the caller.
const CODE_HOOKS: &[&str] = &[
    // sh, bash, zsh
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "PROMPT_COMMAND",
    "ZDOTDIR",
    // Python
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONEXECUTABLE",
    "PYTHONBREAKPOINT",
    "PYTHONWARNINGS",
    "PYTHONINSPECT",
    "PYTHONPLATLIBDIR",
    "PYTHONPYCACHEPREFIX",
    // Perl
    "PERL5LIB",
    "PERLLIB",
    "PERL5OPT",
    "PERL5DB",
    "PERLIO",
    // Ruby
    "RUBYOPT",
    "RUBYLIB",
    "GEM_HOME",
    "GEM_PATH",
    // Node.js
    "NODE_OPTIONS",
    "NODE_PATH",
    // PHP
    "PHPRC",
    "PHP_INI_SCAN_DIR",
    // Java
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    // Lua, Tcl
    "LUA_INIT",
    "LUA_PATH",
    "LUA_CPATH",
    "TCLLIBPATH",
    // OpenSSL loads engines and providers (shared objects) by config.
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
];

/// Dropped by prefix: the dynamic loader's `LD_*`, glibc's `MALLOC_*`
/// (MALLOC_CHECK_, MALLOC_TRACE...), bash's exported functions.
const PREFIXES: &[&str] = &["LD_", "MALLOC_", "BASH_FUNC_"];

fn unsafe_name(name: &[u8]) -> bool {
    GLIBC_UNSECURE
        .iter()
        .chain(CODE_HOOKS)
        .any(|n| n.as_bytes() == name)
        || PREFIXES.iter().any(|p| name.starts_with(p.as_bytes()))
}

fn permitted(name: &[u8], permit: &Permit) -> bool {
    permit.env.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix.as_bytes()),
        None => p.as_bytes() == name,
    })
}

/// The environment blob (NUL-terminated entries) without the variables
/// the caller may not set here, and the names dropped. An entry equal to
/// one of the server's own (`own`: the callee partition's environment,
/// e.g. an image's `ENV LD_LIBRARY_PATH=...`) passes: it names nothing
/// the callee partition did not already have.
pub fn filter_env(env: &[u8], permit: &Permit, own: &HashSet<Vec<u8>>) -> (Vec<u8>, Vec<String>) {
    let mut kept = Vec::with_capacity(env.len());
    let mut dropped = Vec::new();
    for entry in crate::proto::split_nul(env) {
        let name = entry.split(|&b| b == b'=').next().unwrap_or_default();
        if unsafe_name(name) && !permitted(name, permit) && !own.contains(entry) {
            dropped.push(String::from_utf8_lossy(name).into_owned());
        } else {
            kept.extend_from_slice(entry);
            kept.push(0);
        }
    }
    (kept, dropped)
}

/// The kind of a received fd the server refuses by default, if it is one.
pub fn fd_kind(fd: RawFd) -> Result<Option<FdKind>, String> {
    // SAFETY: queries on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags >= 0 && flags & libc::O_PATH != 0 {
        return Ok(Some(FdKind::OPath));
    }
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a local.
    if unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        return Ok(Some(FdKind::Directory));
    }
    // A memfd shows as "/memfd:NAME (deleted)"; nothing else tells it
    // apart from a tmpfs file (F_GET_SEALS answers for both).
    match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(t) if t.as_os_str().as_bytes().starts_with(b"/memfd:") => Ok(Some(FdKind::Memfd)),
        Ok(_) => Ok(None),
        Err(e) => Err(format!(
            "cannot tell whether a passed fd is a memfd: reading /proc/self/fd/{fd}: {e} \
             (is /proc mounted in the callee partition?)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn normalise_is_lexical() {
        let n = |p: &[u8]| normalise(p).map(|p| p.display().to_string());
        assert_eq!(n(b"/usr//bin/./ls").as_deref(), Some("/usr/bin/ls"));
        assert_eq!(n(b"/usr/lib/../bin/ls").as_deref(), Some("/usr/bin/ls"));
        assert_eq!(n(b"/../../bin/sh").as_deref(), Some("/bin/sh"));
        assert_eq!(n(b"/bin/").as_deref(), Some("/bin"));
        assert_eq!(n(b"/").as_deref(), Some("/"));
        assert_eq!(n(b"bin/ls"), None);
        assert_eq!(n(b""), None);
    }

    #[test]
    fn argv0_must_name_the_allowed_file() {
        let mut permit = Permit::default();
        let ls = Path::new("/bin/ls");
        for ok in [&b"ls"[..], b"/bin/ls", b"./ls", b"/usr/bin/ls", b"-ls"] {
            assert!(
                argv0_allowed(ls, ok, &permit),
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
        for bad in [&b"sh"[..], b"/bin/sh", b"", b"ls/", b"--ls", b"ls "] {
            assert!(
                !argv0_allowed(ls, bad, &permit),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        permit.argv0.insert(ls.into(), vec!["dir".into()]);
        assert!(argv0_allowed(ls, b"dir", &permit));
        assert!(!argv0_allowed(ls, b"/bin/dir", &permit));
    }

    #[test]
    fn loader_and_interpreter_hooks_are_dropped_unless_permitted() {
        let env = b"PATH=/bin\0LD_PRELOAD=/proc/self/fd/5\0PYTHONPATH=/x\0\
                    MALLOC_CHECK_=3\0BASH_FUNC_ls%%=() { id; }\0GCONV_PATH=/g\0\
                    LANG=C\0LDX=1\0NOEQUALS\0"
            .to_vec();
        let none = HashSet::new();
        let (kept, dropped) = filter_env(&env, &Permit::default(), &none);
        assert_eq!(kept, b"PATH=/bin\0LANG=C\0LDX=1\0NOEQUALS\0");
        assert_eq!(
            dropped,
            [
                "LD_PRELOAD",
                "PYTHONPATH",
                "MALLOC_CHECK_",
                "BASH_FUNC_ls%%",
                "GCONV_PATH"
            ]
        );
        let permit = Permit {
            env: vec!["LD_*".into(), "PYTHONPATH".into()],
            ..Permit::default()
        };
        let (kept, dropped) = filter_env(&env, &permit, &none);
        assert_eq!(dropped, ["MALLOC_CHECK_", "BASH_FUNC_ls%%", "GCONV_PATH"]);
        assert!(kept.starts_with(b"PATH=/bin\0LD_PRELOAD=/proc/self/fd/5\0PYTHONPATH=/x\0"));
        // What the callee partition has itself passes, with that value only.
        let own = HashSet::from([b"GCONV_PATH=/g".to_vec(), b"PYTHONPATH=/lib".to_vec()]);
        let (_, dropped) = filter_env(&env, &Permit::default(), &own);
        assert_eq!(
            dropped,
            [
                "LD_PRELOAD",
                "PYTHONPATH",
                "MALLOC_CHECK_",
                "BASH_FUNC_ls%%"
            ]
        );
    }

    #[test]
    fn fd_kinds_are_told_apart() {
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(fd_kind(dir.as_raw_fd()), Ok(Some(FdKind::Directory)));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(fd_kind(file.as_raw_fd()), Ok(None));
        // SAFETY: creating fds we close below.
        unsafe {
            let m = libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC);
            assert!(m >= 0);
            assert_eq!(fd_kind(m), Ok(Some(FdKind::Memfd)));
            libc::close(m);
            let p = libc::open(c"/dev/null".as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            assert!(p >= 0);
            assert_eq!(fd_kind(p), Ok(Some(FdKind::OPath)));
            libc::close(p);
        }
    }
}
