//! A compromised caller partition against the server (docs/rpe.md,
//! "Hostile callers"): each attack is refused or survived, and real calls
//! still succeed. Some speak the protocol directly, as a compromised
//! caller can; the others use the real stub.

mod common;
use cimplifier_rpe::fdpass::send_fds;
use cimplifier_rpe::proto::{self, Request, ToServer, ToStub};
use common::Fixture;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Compiles C `source` with `cc` into `out` (extra `args`, e.g. -shared).
fn cc(fx: &Fixture, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let src = fx.path(&format!("work/{name}.c"));
    let out = fx.path(&format!("real/{name}"));
    std::fs::write(&src, source).unwrap();
    let st = Command::new("cc")
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc (the C compiler) is needed to build the test's programs");
    assert!(st.success(), "cc {name}: {st:?}");
    out
}

/// A multi-call binary, as busybox: the program is argv[0]'s file name.
fn multicall(fx: &Fixture) -> PathBuf {
    cc(
        fx,
        "multicall",
        r#"#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *b = argc > 0 ? strrchr(argv[0], '/') : 0;
    printf("applet %s\n", b ? b + 1 : argc > 0 ? argv[0] : "-");
    return 0;
}
"#,
        &[],
    )
}

/// A library whose constructor creates the file named by $RPE_MARKER.
fn evil_library(fx: &Fixture) -> PathBuf {
    cc(
        fx,
        "evil.so",
        r#"#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void) {
    const char *m = getenv("RPE_MARKER");
    if (m) close(open(m, O_CREAT | O_WRONLY, 0644));
}
"#,
        &["-shared", "-fPIC"],
    )
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_encoded_bytes().to_vec()
}

/// A request as a compromised caller would forge it: stdout (fd 1) is a
/// pipe, the rest as given.
fn request(path: &Path, argv: &[&str]) -> Request {
    Request {
        path: bytes(path),
        argv: argv
            .iter()
            .flat_map(|a| [a.as_bytes(), b"\0"].concat())
            .collect(),
        env: b"PATH=/usr/bin:/bin\0".to_vec(),
        cwd: b"/".to_vec(),
        fds: vec![1],
        ..Default::default()
    }
}

/// Sends `req` with `fds` on `sock`; the server's last answer.
fn call_raw(sock: &Path, req: Request, fds: &[RawFd]) -> Option<ToStub> {
    let mut s = UnixStream::connect(sock).unwrap();
    // Only for a server that hangs: the test fails instead of waiting.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    proto::write_frame(&mut s, &ToServer::Request(Box::new(req))).unwrap();
    let _ = send_fds(s.as_raw_fd(), fds);
    let mut last = None;
    while let Ok(Some(m)) = proto::read_frame::<_, ToStub>(&mut s) {
        let end = !matches!(m, ToStub::Started { .. } | ToStub::Stopped(_) | ToStub::Pty);
        last = Some(m);
        if end {
            break;
        }
    }
    last
}

/// Runs `req` with a pipe as its stdout (fd 1): the answer and the output.
fn call_with_stdout(sock: &Path, req: Request) -> (Option<ToStub>, String) {
    let (r, w) = pipe();
    let raw = w.as_raw_fd();
    std::thread::scope(|t| {
        let h = t.spawn(|| {
            let mut text = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut text);
            text
        });
        let reply = call_raw(sock, req, &[raw]);
        drop(w);
        (reply, h.join().unwrap())
    })
}

fn refused(reply: &Option<ToStub>) -> Option<&str> {
    match reply {
        Some(ToStub::Refused { code: 126, message }) => Some(message),
        _ => None,
    }
}

#[test]
fn a_symlink_alias_of_an_allowed_path_is_refused() {
    let mut fx = Fixture::new("alias");
    let mc = multicall(&fx);
    // The callee partition: a multi-call binary and two names for it.
    let ls = fx.path("real/ls");
    let sh = fx.path("real/sh");
    std::os::unix::fs::symlink(&mc, &ls).unwrap();
    std::os::unix::fs::symlink(&mc, &sh).unwrap();
    fx.allow_map(&ls, &ls);
    fx.start();
    let (reply, out) = call_with_stdout(&fx.socket(), request(&ls, &["ls"]));
    assert_eq!(reply, Some(ToStub::Exited(0)), "the allowed path runs");
    assert_eq!(out, "applet ls\n");

    // Same file as /bin/ls once symlinks are followed, but not listed.
    let (reply, out) = call_with_stdout(&fx.socket(), request(&sh, &["sh"]));
    let msg = refused(&reply).unwrap_or_else(|| panic!("alias ran: {reply:?} {out:?}"));
    assert!(
        msg.contains("allow-list") && msg.contains("real/sh"),
        "{msg}"
    );
    // A path that only normalises to the allowed one is that one.
    let dotted = fx.path("real/../real/./ls");
    let (reply, out) = call_with_stdout(&fx.socket(), request(&dotted, &["ls"]));
    assert_eq!(
        (reply, out.as_str()),
        (Some(ToStub::Exited(0)), "applet ls\n")
    );
}

#[test]
fn argv0_cannot_turn_a_multi_call_binary_into_another_program() {
    let mut fx = Fixture::new("argv0");
    let mc = multicall(&fx);
    let ls = fx.stub("ls");
    fx.allow_map(&ls, &mc);
    fx.start();
    let out = Command::new(&ls).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "applet ls\n");
    // A login shell's "-ls" and a full path name the same program.
    let out = Command::new(&ls).arg0("-ls").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "applet -ls\n",
        "{out:?}"
    );

    let out = Command::new(&ls).arg0("sh").output().unwrap();
    assert_eq!(out.status.code(), Some(126), "argv[0] swap ran: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("argv[0]") && err.contains("\"sh\""), "{err}");
    // The raw protocol too, and an empty argv (argc 0).
    let (reply, _) = call_with_stdout(&fx.socket(), request(&ls, &[]));
    assert!(
        refused(&reply).is_some_and(|m| m.contains("empty argv")),
        "{reply:?}"
    );
}

#[test]
fn argv0_values_can_be_permitted_per_path() {
    let mut fx = Fixture::new("argv0permit");
    let mc = multicall(&fx);
    let ls = fx.stub("ls");
    fx.allow_map(&ls, &mc);
    fx.extra_toml = format!(
        "[partition.permit.argv0]\n{:?} = [\"dir\"]\n",
        ls.display().to_string()
    );
    fx.start();
    let out = Command::new(&ls).arg0("dir").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "applet dir\n",
        "{out:?}"
    );
    let out = Command::new(&ls).arg0("sh").output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
}

/// A stub `bin/true` for the dynamically linked /bin/true.
fn true_fixture(name: &str, extra_toml: &str) -> (Fixture, PathBuf, PathBuf, PathBuf) {
    let mut fx = Fixture::new(name);
    let lib = evil_library(&fx);
    let t = fx.callee_exec("true", Path::new("/bin/true"));
    fx.extra_toml = extra_toml.into();
    fx.start();
    let marker = fx.path("work/constructor-ran");
    (fx, t, lib, marker)
}

#[test]
fn ld_preload_from_the_caller_does_not_reach_the_callee() {
    let (_fx, t, lib, marker) = true_fixture("preload", "");
    let out = Command::new(&t)
        .env("LD_PRELOAD", &lib)
        .env("RPE_MARKER", &marker)
        .output()
        .unwrap();
    assert!(out.status.success(), "the call itself runs: {out:?}");
    assert!(
        !marker.exists(),
        "the caller's LD_PRELOAD ran in the callee"
    );

    // The library does work: a partition permitted LD_PRELOAD gets it.
    let (_fx, t, lib, marker) =
        true_fixture("preloadok", "[partition.permit]\nenv = [\"LD_PRELOAD\"]\n");
    let out = Command::new(&t)
        .env("LD_PRELOAD", &lib)
        .env("RPE_MARKER", &marker)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        marker.exists(),
        "permitted LD_PRELOAD did not reach the callee"
    );
}

/// `lib` in a memfd at fd 5 of a command that runs `t`.
fn with_memfd_at_5(t: &Path, lib: &Path) -> Command {
    let code = std::fs::read(lib).unwrap();
    let m = unsafe { libc::memfd_create(c"lib".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(m >= 0);
    let mut f = unsafe { std::fs::File::from_raw_fd(m) };
    f.write_all(&code).unwrap();
    let mut cmd = Command::new(t);
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep FD_CLOEXEC (the memfd can be fd
            // 5 already when other tests hold fewer fds).
            let done = if f.as_raw_fd() == 5 {
                libc::fcntl(5, libc::F_SETFD, 0)
            } else {
                libc::dup2(f.as_raw_fd(), 5)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.env("LD_PRELOAD", "/proc/self/fd/5");
    cmd
}

#[test]
fn a_memfd_library_does_not_run_in_the_callee() {
    let (_fx, t, lib, marker) = true_fixture("memfd", "");
    let out = with_memfd_at_5(&t, &lib)
        .env("RPE_MARKER", &marker)
        .output()
        .unwrap();
    assert!(
        !marker.exists(),
        "a memfd's constructor ran in the callee: {out:?}"
    );
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fd 5") && err.contains("memfd"), "{err}");

    // Permitted memfds (but not LD_PRELOAD) pass; the library still does not run.
    let (_fx, t, lib, marker) = true_fixture("memfdok", "[partition.permit]\nfds = [\"memfd\"]\n");
    let out = with_memfd_at_5(&t, &lib)
        .env("RPE_MARKER", &marker)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!marker.exists(), "a memfd's constructor ran in the callee");
}

#[test]
fn directory_and_o_path_fds_are_refused() {
    let mut fx = Fixture::new("dirfd");
    let sh = fx.callee_exec("sh", Path::new("/bin/sh"));
    fx.start();
    // Through the real stub: a directory (poll finds no O_PATH fd, so a
    // stub never sends one; a forged request can).
    let d = std::fs::File::open("/").unwrap();
    let raw = d.as_raw_fd();
    let mut cmd = Command::new(&sh);
    cmd.args(["-c", "ls /proc/self/fd/7/ >/dev/null"]);
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(126), "directory fd passed: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fd 7: it is an fd of kind directory"), "{err}");

    let p = unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    assert!(p >= 0);
    let p = unsafe { OwnedFd::from_raw_fd(p) };
    let mut req = request(&sh, &["sh", "-c", "true"]);
    req.fds = vec![7];
    let reply = call_raw(&fx.socket(), req, &[p.as_raw_fd()]);
    let msg = refused(&reply).unwrap_or_else(|| panic!("O_PATH fd passed: {reply:?}"));
    assert!(msg.contains("fd 7: it is an fd of kind o-path"), "{msg}");
}

#[test]
fn fd_numbers_and_counts_are_bounded_and_the_server_survives() {
    let mut fx = Fixture::new("fdnum");
    let echo = fx.callee("echo", "echo still here");
    fx.start();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    // fd 2^31-1: the callee's fd table would need 8 GiB.
    let mut req = request(&echo, &["echo"]);
    req.fds = vec![i32::MAX];
    let reply = call_raw(&fx.socket(), req, &[devnull.as_raw_fd()]);
    let msg = refused(&reply).unwrap_or_else(|| panic!("fd 2^31-1: {reply:?}"));
    assert!(msg.contains("2147483647"), "{msg}");
    // 5,000 fds announced: refused before any is received.
    let mut req = request(&echo, &["echo"]);
    req.fds = (0..5000).collect();
    let reply = call_raw(&fx.socket(), req, &[]);
    let msg = refused(&reply).unwrap_or_else(|| panic!("5,000 fds: {reply:?}"));
    assert!(msg.contains("over the RPE limit"), "{msg}");

    assert!(fx.server_pid().is_some(), "the server died");
    let out = Command::new(&echo).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "still here\n",
        "{out:?}"
    );
}

#[test]
fn a_huge_frame_is_refused_without_waiting_for_it() {
    let mut fx = Fixture::new("frame");
    fx.callee("x", "true");
    fx.start();
    let mut s = UnixStream::connect(fx.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut hdr = proto::encode(&ToServer::Signal(0)).unwrap();
    hdr.truncate(proto::HEADER_LEN);
    hdr[8..12].copy_from_slice(&(32u32 << 20).to_le_bytes());
    s.write_all(&hdr).unwrap();
    let reply = proto::read_frame::<_, ToStub>(&mut s).unwrap();
    let msg = refused(&reply).unwrap_or_else(|| panic!("32 MiB frame: {reply:?}"));
    assert!(msg.contains("limit"), "{msg}");
}

#[test]
fn limits_and_priority_are_set_as_the_caller_not_as_root() {
    let mut fx = Fixture::new("order");
    let nice = fx.callee("nice", "nice");
    fx.start();
    let sock = fx.socket();
    // A stub as uid 1001 that claims nice -5, which only root may set.
    let (reply, out) = std::thread::spawn(move || {
        let r = unsafe { libc::syscall(libc::SYS_setresuid, 1001, 1001, 1001) };
        assert_eq!(r, 0);
        let mut req = request(&nice, &["nice"]);
        req.uid = 1001;
        req.euid = 1001;
        req.nice = -5;
        call_with_stdout(&sock, req)
    })
    .join()
    .unwrap();
    assert_eq!(reply, Some(ToStub::Exited(0)), "{out}");
    let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    assert_eq!(
        out.trim(),
        own.to_string(),
        "the callee got a priority its caller cannot have"
    );
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn five_thousand_idle_connections_next_to_a_real_call() {
    let mut fx = Fixture::new("idle");
    let echo = fx.callee("echo", "echo \"real $1\"");
    fx.start();
    let pid = fx.server_pid().unwrap();
    let idle: Vec<UnixStream> = (0..5000)
        .map(|i| {
            UnixStream::connect(fx.socket()).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    let out = Command::new(&echo).arg("call").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real call\n");
    // Accepted in order, so every idle one was accepted before the call.
    // Waiting ones are capped: no thread each.
    let n = threads(pid);
    assert!(
        n < 200,
        "the server holds {n} threads for 5,000 idle connections"
    );
    let cut = idle
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            matches!((&mut &**s).read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    assert!(
        cut >= 4800,
        "only {cut} of 5,000 idle connections were cut off"
    );
    assert!(fx.server_pid().is_some(), "the server died");
}

#[test]
fn the_socket_is_created_reachable_whatever_the_servers_umask() {
    let mut fx = Fixture::new("umask");
    let id = fx.callee("id", "id -u");
    fx.socket_rel = "run/new/dir/rpe.sock";
    fx.server_umask = Some(0o077);
    fx.start();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fx.socket()), 0o666);
    assert_eq!(mode(&fx.path("run/new")), 0o755);
    assert_eq!(mode(&fx.path("run/new/dir")), 0o755);
    // A stub of another user reaches it.
    let mut cmd = Command::new(&id);
    cmd.uid(1001).gid(1001);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1001\n");
}

/// A callee that stops itself `n` times; a child continues it each time.
fn stopper(fx: &Fixture) -> PathBuf {
    cc(
        fx,
        "stopper",
        r#"#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static char state(pid_t pid) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] ? p[2] : 0;
}
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    pid_t me = getpid();
    if (fork() == 0) {
        for (;;) {
            char s = state(me);
            if (s == 0 || s == 'Z') _exit(0);
            /* Stopped: leave the server time to see it, then go on. */
            if (s == 'T') { usleep(200); kill(me, SIGCONT); }
        }
    }
    for (int i = 0; i < n; i++) raise(SIGSTOP);
    return 0;
}
"#,
        &["-include", "string.h"],
    )
}

#[test]
fn a_caller_that_stops_reading_does_not_wedge_the_reaper() {
    let mut fx = Fixture::new("stalled");
    let stop = stopper(&fx);
    let stops = fx.path("real/stops");
    fx.allow_map(&stops, &stop);
    let echo = fx.callee("echo", "echo \"real $1\"");
    fx.start();
    // A caller that never reads its socket: the server's writes to it
    // block, its call thread stops reading the status pipe, and each of
    // 30,000 stops is a status for that pipe.
    let mut s = UnixStream::connect(fx.socket()).unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let mut req = request(&stops, &["stops", "30000"]);
    req.fds = vec![0];
    proto::write_frame(&mut s, &ToServer::Request(Box::new(req))).unwrap();
    send_fds(s.as_raw_fd(), &[devnull.as_raw_fd()]).unwrap();
    // Wait until the stopper is done (its pid in Started is the first frame).
    let started = proto::read_frame::<_, ToStub>(&mut s).unwrap();
    let Some(ToStub::Started { pid }) = started else {
        panic!("{started:?}")
    };
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| st.contains(") Z"))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // A real call still gets its callee reaped.
    let mut child = Command::new(&echo)
        .arg("call")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    // Not a timing assertion: a wedged reaper never reaps the call.
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the real call never ended: the reaper is wedged");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real call\n");
    drop(s);
}
