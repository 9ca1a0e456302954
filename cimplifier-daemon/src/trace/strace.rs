//! The paper's input: `strace -f -y -yy -s 4096 -o FILE` logs (or the
//! per-process files of `-ff`), turned into the same [`Event`]s the eBPF
//! tracer produces. Each line becomes a raw record and goes through the
//! tracer's own [`Resolver`], so both inputs share one path semantics.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use cimplifier_common::flags;
use cimplifier_common::syscalls::{self, AddrSource, StrSource, nr, spec};

use crate::trace::decode::{RawHeader, RawRecord, RawStr, RawSyscall};
use crate::trace::resolve::Resolver;
use crate::trace::{ContainerPath, Event};

/// Reads strace logs: one `-f -o FILE` log, or the `FILE.PID` files of `-ff`
/// (the pid is taken from the name, and files are read in pid order).
pub fn read_strace_logs(paths: &[&Path]) -> Result<Vec<Event>> {
    Ok(read_strace(paths)?.events)
}

/// What strace logs held.
pub struct StraceLogs {
    pub events: Vec<Event>,
    /// Logs whose last line was cut off (strace was killed while writing):
    /// read up to that line.
    pub cut_off: Vec<std::path::PathBuf>,
}

/// [`read_strace_logs`], also telling which logs end in a cut-off line.
/// An empty log is an error: it recorded nothing.
pub fn read_strace(paths: &[&Path]) -> Result<StraceLogs> {
    let mut parser = Parser::default();
    let mut files: Vec<(Option<u32>, &Path)> = paths
        .iter()
        .map(|p| {
            (
                p.extension()
                    .and_then(|e| e.to_str())
                    .and_then(|e| e.parse().ok()),
                *p,
            )
        })
        .collect();
    files.sort();
    for (pid, path) in files {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading strace log {}", path.display()))?;
        anyhow::ensure!(
            !bytes.is_empty(),
            "strace log {} is empty: strace recorded nothing there (was it the file of -o?)",
            path.display()
        );
        parser.text(&String::from_utf8_lossy(&bytes), pid, path)?;
    }
    Ok(StraceLogs {
        events: parser.events,
        cut_off: parser.cut_off,
    })
}

/// Parses the text of one strace log; `name` is used in errors. For a `-ff`
/// file, `pid` is the pid its name carries.
pub fn parse_strace_text(text: &str, pid: Option<u32>, name: &Path) -> Result<Vec<Event>> {
    let mut parser = Parser::default();
    parser.text(text, pid, name)?;
    Ok(parser.events)
}

#[derive(Default)]
struct Parser {
    resolver: Resolver,
    events: Vec<Event>,
    /// `<unfinished ...>` calls: pid -> (name, arguments so far).
    unfinished: HashMap<u32, (String, String)>,
    /// Thread id -> process id, learnt from CLONE_THREAD.
    tgid: HashMap<u32, u32>,
    /// Process id -> name of its last exec, as the comm.
    comm: HashMap<u32, String>,
    seq: u64,
    /// Logs whose last line was cut off.
    cut_off: Vec<std::path::PathBuf>,
}

const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_THREAD: u64 = 0x10000;
const SIGCHLD: u64 = 17;

impl Parser {
    fn text(&mut self, text: &str, pid: Option<u32>, name: &Path) -> Result<()> {
        // strace ends every line with a newline: a last line without one
        // was cut off (strace was stopped mid-write) and is not read, even
        // if what is left of it parses.
        let (whole, cut) = match text.rfind('\n') {
            _ if text.ends_with('\n') => (text, ""),
            Some(i) => text.split_at(i + 1),
            None => ("", text),
        };
        let mut n = 0;
        for (i, line) in whole.lines().enumerate() {
            n = i + 1;
            // The line is quoted in part: one can be megabytes long.
            self.line(line, pid).with_context(|| {
                format!(
                    "{}:{n}: {}",
                    name.display(),
                    crate::cli::quote_capped(line, 200)
                )
            })?;
        }
        if !cut.is_empty() {
            tracing::warn!(
                "{}:{}: the last line is cut off (strace was stopped while writing it); read up to it",
                name.display(),
                n + 1
            );
            self.cut_off.push(name.to_path_buf());
        }
        Ok(())
    }

    fn header(&mut self, tid: u32) -> RawHeader {
        self.seq += 1;
        let pid = self.tgid.get(&tid).copied().unwrap_or(tid);
        RawHeader {
            pid,
            tid,
            ppid: 0,
            ts_ns: self.seq,
            cgroup_id: 0,
            comm: self.comm.get(&pid).cloned().unwrap_or_default(),
        }
    }

    fn push(&mut self, rec: RawRecord) {
        let events = self.resolver.handle(rec);
        self.events.extend(events);
    }

    fn line(&mut self, line: &str, file_pid: Option<u32>) -> Result<()> {
        let (tid, rest) = match file_pid {
            Some(pid) => (pid, line.trim_start()),
            None => {
                let (pid, rest) = line
                    .split_once(char::is_whitespace)
                    .context("expected `PID syscall(...)`; was the log written with -f?")?;
                (
                    pid.parse()
                        .context("expected a pid at the start of the line")?,
                    rest.trim_start(),
                )
            }
        };
        if let Some(status) = rest.strip_prefix("+++ ") {
            if status.starts_with("exited") || status.starts_with("killed") {
                let header = self.header(tid);
                let group_dead = header.pid == tid;
                self.push(RawRecord::Exit { header, group_dead });
            }
            return Ok(());
        }
        if rest.starts_with("---") || rest.is_empty() {
            return Ok(()); // signals
        }
        let (name, call) = if let Some(resumed) = rest.strip_prefix("<... ") {
            let (name, tail) = resumed
                .split_once(" resumed>")
                .context("expected `<... NAME resumed>`")?;
            let Some((_, head)) = self.unfinished.remove(&tid) else {
                return Ok(()); // resumed before the log began
            };
            (name.to_owned(), format!("{head}{tail}"))
        } else {
            let (name, args) = rest
                .split_once('(')
                .context("expected `NAME(ARGS) = RET`")?;
            if let Some(head) = args.strip_suffix(" <unfinished ...>") {
                self.unfinished
                    .insert(tid, (name.to_owned(), head.to_owned()));
                return Ok(());
            }
            (name.to_owned(), args.to_owned())
        };
        let Some(number) = number_of(&name) else {
            return Ok(());
        };
        let (args, ret) = split_call(&call).context("expected `ARGS) = RET`")?;
        self.syscall(tid, number, &args, ret)
    }

    fn syscall(&mut self, tid: u32, n: u32, args: &[String], ret: &str) -> Result<()> {
        let spec = spec(n).expect("number_of only returns traced syscalls");
        let (ret, no_return) = parse_ret(ret)?;
        let mut raw = RawSyscall {
            header: self.header(tid),
            nr: n,
            flags: if no_return { flags::NO_RETURN } else { 0 },
            args: [0; 6],
            ret,
            enter_ts_ns: 0,
            fold_key: [0, 0],
            str0: None,
            str1: None,
            argv: None,
            sockaddr: None,
        };
        for (slot, a) in raw.args.iter_mut().zip(args) {
            *slot = number(a);
        }
        // `-y` prints the cwd with AT_FDCWD: it seeds a process whose start
        // (fork, chdir) the log does not show.
        if let Some(cwd) = args
            .iter()
            .find_map(|a| a.strip_prefix("AT_FDCWD<")?.strip_suffix('>'))
            .and_then(ContainerPath::new)
        {
            self.resolver.learn_cwd(raw.header.pid, cwd);
        }
        let string_at = |i: u8| {
            args.get(i as usize)
                .and_then(|a| c_string(a))
                .map(|bytes| RawStr::Text {
                    bytes,
                    truncated: false,
                })
        };
        if let StrSource::Path(i) = spec.str0 {
            raw.str0 = string_at(i);
        }
        match spec.str1 {
            StrSource::Path(i) => raw.str1 = string_at(i),
            StrSource::ReadlinkResult(i) if ret > 0 => raw.str1 = string_at(i),
            StrSource::Argv(i) => {
                raw.argv = args.get(i as usize).map(|a| array_strings(a));
            }
            _ => {}
        }
        raw.sockaddr = match spec.addr {
            AddrSource::In { ptr, .. } | AddrSource::Out { ptr, .. } => {
                args.get(ptr as usize).and_then(|a| sockaddr(a))
            }
            AddrSource::MsgHdr(i) => args
                .get(i as usize)
                .and_then(|a| a.split_once("msg_name="))
                .and_then(|(_, m)| sockaddr(m)),
            AddrSource::None => None,
        };
        if raw.sockaddr.is_some() {
            raw.flags |= flags::SOCKADDR_PRESENT;
        }
        if matches!(n, nr::EXECVE | nr::EXECVEAT) {
            if let Some(RawStr::Text { bytes, .. }) = &raw.str0
                && ret == 0
            {
                let name = String::from_utf8_lossy(bytes);
                let base = name
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(15)
                    .collect();
                self.comm.insert(raw.header.pid, base);
            }
            self.push(RawRecord::ExecArgs(raw.clone()));
            raw.str0 = None;
            raw.argv = None;
        }
        if matches!(n, nr::CLONE | nr::CLONE3 | nr::FORK | nr::VFORK) && ret > 0 {
            let clone_flags = match n {
                nr::FORK => SIGCHLD,
                nr::VFORK => CLONE_VM | CLONE_VFORK | SIGCHLD,
                _ => args
                    .iter()
                    .find_map(|a| {
                        a.trim_start_matches('{')
                            .split(", ")
                            .find_map(|f| f.strip_prefix("flags="))
                            .map(number)
                    })
                    .unwrap_or(0),
            };
            let child = ret as u32;
            if clone_flags & CLONE_THREAD != 0 {
                self.tgid.insert(child, raw.header.pid);
            }
            let header = raw.header.clone();
            self.push(RawRecord::Fork {
                header,
                child_tid: child,
                clone_flags,
            });
        }
        self.push(RawRecord::Syscall(raw));
        Ok(())
    }
}

/// Syscall number by name, for the traced syscalls (strace prints `stat` as
/// `stat` on x86_64).
fn number_of(name: &str) -> Option<u32> {
    syscalls::TRACED
        .iter()
        .copied()
        .find(|&n| syscalls::name(n) == name)
}

/// Splits `a, "b, c", {d, e}) = 3<...>` into top-level arguments and the
/// text after ` = `.
fn split_call(call: &str) -> Option<(Vec<String>, &str)> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut depth = 0i32;
    let mut prev = ' ';
    let mut chars = call.char_indices();
    while let Some((i, c)) = chars.next() {
        // `[110 => 2]` (value changed) and `[1->2]` (socket peers) are
        // arrows, not closing brackets.
        let arrow = c == '>' && matches!(prev, '=' | '-');
        prev = c;
        match c {
            _ if arrow => {}
            '"' => {
                current.push(c);
                let mut escaped = false;
                for (_, c) in chars.by_ref() {
                    current.push(c);
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                continue;
            }
            '(' | '[' | '{' | '<' => depth += 1,
            ']' | '}' | '>' => depth -= 1,
            ')' if depth == 0 => {
                if !current.trim().is_empty() {
                    args.push(current.trim().to_owned());
                }
                let ret = call[i + 1..].trim_start().strip_prefix('=')?.trim();
                return Some((args, ret));
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                args.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    None
}

/// `3`, `-1 ENOENT (No such file or directory)`, `0x7f00`, `?`.
fn parse_ret(ret: &str) -> Result<(i64, bool)> {
    if ret.starts_with('?') {
        return Ok((0, true));
    }
    let mut words = ret.split_whitespace();
    let value = words.next().context("expected a return value after `=`")?;
    if value == "-1"
        && let Some(name) = words.next()
    {
        return Ok((
            -errno(name)
                .with_context(|| format!("unknown errno {}", crate::cli::quote_capped(name, 40)))?,
            false,
        ));
    }
    Ok((number(value) as i64, false))
}

fn errno(name: &str) -> Option<i64> {
    static BY_NAME: std::sync::OnceLock<HashMap<String, i64>> = std::sync::OnceLock::new();
    let by_name = BY_NAME.get_or_init(|| {
        (1..=4096)
            .map(|n| {
                (
                    format!("{:?}", nix::errno::Errno::from_raw(n)),
                    i64::from(n),
                )
            })
            .filter(|(name, _)| name != "UnknownErrno")
            .collect()
    });
    by_name.get(name).copied()
}

/// A numeric argument: decimal, hex, octal, `AT_FDCWD`, an fd with its
/// `<path>` annotation, or `A|B|C` flag names.
fn number(arg: &str) -> u64 {
    let arg = arg.split('<').next().unwrap_or_default().trim();
    if arg.starts_with("AT_FDCWD") {
        return -100i64 as u64;
    }
    arg.split('|')
        .map(|part| atom(part.trim()))
        .fold(0, |acc, v| acc | v)
}

fn atom(part: &str) -> u64 {
    if let Some(hex) = part.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).unwrap_or(0);
    }
    if part.len() > 1 && part.starts_with('0') && part.bytes().all(|b| b.is_ascii_digit()) {
        return u64::from_str_radix(part, 8).unwrap_or(0);
    }
    if let Ok(v) = part.parse::<i64>() {
        return v as u64;
    }
    FLAGS
        .iter()
        .find(|(n, _)| *n == part)
        .map_or(0, |(_, v)| *v)
}

/// The flag names whose values the model and the resolver read.
const FLAGS: &[(&str, u64)] = &[
    ("O_RDONLY", 0),
    ("O_WRONLY", 1),
    ("O_RDWR", 2),
    ("O_CREAT", 0o100),
    ("O_EXCL", 0o200),
    ("O_TRUNC", 0o1000),
    ("O_APPEND", 0o2000),
    ("O_DIRECTORY", 0o200000),
    ("O_CLOEXEC", 0o2000000),
    ("AT_EMPTY_PATH", 0x1000),
    ("AT_SYMLINK_NOFOLLOW", 0x100),
    ("AT_REMOVEDIR", 0x200),
    ("F_DUPFD", 0),
    ("F_SETFD", 2),
    ("F_DUPFD_CLOEXEC", 1030),
    ("FD_CLOEXEC", 1),
    ("CLONE_VM", 0x100),
    ("CLONE_FS", 0x200),
    ("CLONE_FILES", 0x400),
    ("CLONE_VFORK", 0x4000),
    ("CLONE_THREAD", 0x10000),
    ("SIGCHLD", 17),
];

/// The bytes of a C string literal argument, `None` for anything else.
fn c_string(arg: &str) -> Option<Vec<u8>> {
    parse_c_string(arg).map(|(bytes, _)| bytes)
}

/// Decodes the C string literal (with strace's escapes) at the start of `s`,
/// which begins with `"`. Returns its bytes and the text after it, or `None`
/// when `s` holds no whole literal.
pub fn parse_c_string(s: &str) -> Option<(Vec<u8>, &str)> {
    let body = s.strip_prefix('"')?;
    let bytes = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some((out, &body[i + 1..])),
            b'\\' if i + 1 < bytes.len() => {
                i += 1;
                match bytes[i] {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'v' => out.push(0x0b),
                    b'f' => out.push(0x0c),
                    b'x' if i + 2 < bytes.len() => {
                        out.push(u8::from_str_radix(body.get(i + 1..i + 3)?, 16).ok()?);
                        i += 2;
                    }
                    b'0'..=b'7' => {
                        let mut end = i;
                        while end + 1 < bytes.len()
                            && end < i + 2
                            && (b'0'..=b'7').contains(&bytes[end + 1])
                        {
                            end += 1;
                        }
                        out.push(u8::from_str_radix(&body[i..=end], 8).ok()?);
                        i = end;
                    }
                    c => out.push(c),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    None
}

/// `["ls", "-l"]` -> the strings.
fn array_strings(arg: &str) -> Vec<String> {
    let inner = arg.trim().trim_start_matches('[').trim_end_matches(']');
    split_call(&format!("{inner}) = 0"))
        .map(|(items, _)| items)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| c_string(s))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect()
}

/// A `{sa_family=..., ...}` argument as the raw `struct sockaddr` bytes the
/// kernel side would have copied.
fn sockaddr(arg: &str) -> Option<Vec<u8>> {
    let field = |name: &str| {
        arg.split(", ")
            .find_map(|f| f.trim_start_matches('{').strip_prefix(name))
            .map(|v| v.trim_end_matches('}'))
    };
    let port =
        |v: &str| -> Option<u16> { v.strip_prefix("htons(")?.trim_end_matches(')').parse().ok() };
    match field("sa_family=")? {
        "AF_UNIX" => {
            let mut out = vec![1, 0];
            match field("sun_path=") {
                Some(v) if v.starts_with('@') => {
                    out.push(0);
                    out.extend(c_string(&v[1..])?);
                }
                Some(v) => out.extend(c_string(v)?),
                None => {}
            }
            Some(out)
        }
        "AF_INET" => {
            let mut out = vec![2, 0];
            out.extend(port(field("sin_port=")?)?.to_be_bytes());
            let ip = field("sin_addr=")?
                .strip_prefix("inet_addr(")?
                .trim_end_matches(')');
            let ip: std::net::Ipv4Addr = String::from_utf8(c_string(ip)?).ok()?.parse().ok()?;
            out.extend(ip.octets());
            Some(out)
        }
        "AF_INET6" => {
            let mut out = vec![10, 0];
            out.extend(port(field("sin6_port=")?)?.to_be_bytes());
            out.extend([0; 4]);
            let at = arg.find("inet_pton(AF_INET6, ")? + "inet_pton(AF_INET6, ".len();
            let ip = String::from_utf8(c_string(&arg[at..])?).ok()?;
            let ip: std::net::Ipv6Addr = ip.parse().ok()?;
            out.extend(ip.octets());
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
