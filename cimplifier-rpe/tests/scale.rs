//! Big environments, many fds at their exact numbers, many calls at once.

mod common;
use common::Fixture;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn env_of_128_kib_arrives_exactly() {
    let mut fx = Fixture::new("env");
    let env = fx.callee_exec("env", Path::new("/usr/bin/env"));
    fx.start();
    // One string may not exceed 128 KiB (MAX_ARG_STRLEN): four of 32 KiB.
    let big: String = (0..32 * 1024 - 16)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let out = Command::new(&env)
        .env_clear()
        .env("BIG1", &big)
        .env("BIG2", &big)
        .env("BIG3", &big)
        .env("BIG4", &big)
        .env("EMPTY", "")
        .env("WITH_EQUALS", "a=b=c")
        .env("SPACES", " x y ")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    got.sort();
    let bigs: Vec<String> = (1..=4).map(|i| format!("BIG{i}={big}")).collect();
    let mut want: Vec<&str> = bigs.iter().map(String::as_str).collect();
    want.extend(["EMPTY=", "SPACES= x y ", "WITH_EQUALS=a=b=c"]);
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "environment differs");
}

/// Moves `fd` to a number at or above `min`, close-on-exec.
fn high(fd: OwnedFd, min: RawFd) -> OwnedFd {
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    assert!(n >= 0);
    unsafe { OwnedFd::from_raw_fd(n) }
}

#[test]
fn a_hundred_fds_keep_their_numbers() {
    let mut fx = Fixture::new("fds");
    let sh = fx.callee_exec("lsfd", Path::new("/bin/sh"));
    fx.start();
    let targets: Vec<RawFd> = (3..53).chain(200..250).collect();
    let mut want = BTreeMap::new();
    let mut srcs = Vec::new();
    for &t in &targets {
        let p = fx.path(&format!("work/f{t}"));
        std::fs::write(&p, "").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        srcs.push(high(f.into(), 5000));
        want.insert(t, p.display().to_string());
    }
    let plan: Vec<(RawFd, RawFd)> = srcs
        .iter()
        .map(|s| s.as_raw_fd())
        .zip(targets.iter().copied())
        .collect();
    let mut cmd = Command::new(&sh);
    // `; true` keeps sh from exec'ing ls in its place.
    cmd.args(["-c", "ls -l /proc/$$/fd; true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(move || {
            for &(s, t) in &plan {
                if libc::dup2(s, t) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Exactly 0-2 and the targets: drop whatever the test runner leaked.
            libc::syscall(libc::SYS_close_range, 53, 199, 0);
            libc::syscall(libc::SYS_close_range, 250, u32::MAX, 0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let listing = String::from_utf8(out.stdout).unwrap();
    let mut got = BTreeMap::new();
    for line in listing.lines() {
        if let Some((left, target)) = line.split_once(" -> ") {
            let fd: RawFd = left.split_whitespace().last().unwrap().parse().unwrap();
            got.insert(fd, target.to_string());
        }
    }
    assert_eq!(got.remove(&0).as_deref(), Some("/dev/null"), "{listing}");
    assert!(got.remove(&1).unwrap().starts_with("pipe:"), "{listing}");
    assert_eq!(got.remove(&2).as_deref(), Some("/dev/null"), "{listing}");
    assert_eq!(got, want, "fds in the callee differ:\n{listing}");
    drop(srcs);
}

#[test]
fn fifty_concurrent_calls() {
    let mut fx = Fixture::new("concurrent");
    let echo = fx.callee("echo", "sleep 0.2; echo \"call $1\"; exit \"$1\"");
    fx.start();
    let children: Vec<_> = (0..50)
        .map(|i| {
            Command::new(&echo)
                .arg(i.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(i as i32), "call {i}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("call {i}\n"));
    }
}
