//! Credentials and process attributes reach the callee; a stub cannot
//! claim an identity it does not have.

mod common;
use cimplifier_rpe::proto::{self, Request, ToServer, ToStub};
use common::Fixture;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

#[test]
fn ids_umask_cwd_rlimit_nice_are_forwarded() {
    let mut fx = Fixture::new("creds");
    let who = fx.callee(
        "who",
        "echo \"$(id -u) $(id -g) $(id -G)\"; umask; pwd; ulimit -n; ulimit -H -n; nice",
    );
    fx.start();
    let cwd = fx.path("work/here");
    std::fs::create_dir(&cwd).unwrap();
    let mut cmd = Command::new(&who);
    cmd.current_dir(&cwd);
    unsafe {
        cmd.pre_exec(|| {
            let rl = libc::rlimit {
                rlim_cur: 777,
                rlim_max: 1024,
            };
            let groups = [1234, 5678];
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0
                || libc::setpriority(libc::PRIO_PROCESS, 0, 5) != 0
                || libc::setgroups(2, groups.as_ptr()) != 0
                || libc::setgid(4321) != 0
                || libc::setuid(1001) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::umask(0o027);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "1001 4321 4321 1234 5678\n0027\n{}\n777\n1024\n5\n",
        cwd.display()
    );
    assert_eq!(got, want);
}

#[test]
fn a_forged_uid_is_refused() {
    let mut fx = Fixture::new("forge");
    let who = fx.callee("who", "id -u");
    fx.start();
    let sock = fx.socket();
    // A raw setresuid changes only this thread's credentials, which are
    // what SO_PEERCRED records at connect().
    let reply = std::thread::spawn(move || {
        let r = unsafe { libc::syscall(libc::SYS_setresuid, 1001, 1001, 1001) };
        assert_eq!(r, 0);
        let mut s = UnixStream::connect(&sock).unwrap();
        let req = Request {
            path: who.as_os_str().as_encoded_bytes().to_vec(),
            argv: b"who\0".to_vec(),
            cwd: b"/".to_vec(),
            ..Default::default() // uid 0: a lie
        };
        proto::write_frame(&mut s, &ToServer::Request(Box::new(req))).unwrap();
        proto::read_frame::<_, ToStub>(&mut s).unwrap()
    })
    .join()
    .unwrap();
    match reply {
        Some(ToStub::Refused { code: 126, message }) => {
            assert!(message.contains("connected as uid 1001"), "{message}")
        }
        other => panic!("forged request was not refused: {other:?}"),
    }
}
