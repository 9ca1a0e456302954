//! Signals relayed from the stub to the callee, and the callee's death
//! mirrored by the stub.

mod common;
use common::{Fixture, with_default_signals};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn wait_for(p: &Path) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_for_text(p: &Path, want: &str) {
    let t0 = Instant::now();
    loop {
        let got = std::fs::read_to_string(p).unwrap_or_default();
        if got == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} holds {got:?}, not {want:?}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

#[test]
fn sigterm_reaches_a_trapping_callee() {
    let mut fx = Fixture::new("trap");
    let trap = fx.callee(
        "trap",
        "trap 'echo usr1 >> \"$1\"' USR1\n\
         trap 'echo hup >> \"$1\"' HUP\n\
         trap 'echo term >> \"$1\"; exit 42' TERM\n\
         : > \"$2\"\n\
         while :; do sleep 0.02; done",
    );
    fx.start();
    let (marker, ready) = (fx.path("work/marker"), fx.path("work/ready"));
    let child = with_default_signals(Command::new(&trap))
        .arg(&marker)
        .arg(&ready)
        .spawn()
        .unwrap();
    wait_for(&ready);
    // Each signal once the trap of the one before has run: the shell runs
    // traps between commands, and two pending signals of different kinds
    // would be handled in the kernel's order, not in the order sent.
    kill(&child, libc::SIGUSR1);
    wait_for_text(&marker, "usr1\n");
    kill(&child, libc::SIGHUP);
    wait_for_text(&marker, "usr1\nhup\n");
    kill(&child, libc::SIGTERM);
    let st = child.wait_with_output().unwrap().status;
    assert_eq!(st.code(), Some(42), "{st:?}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "usr1\nhup\nterm\n"
    );
}

#[test]
fn sigterm_kills_a_default_callee_and_the_stub_dies_the_same() {
    let mut fx = Fixture::new("termdefault");
    let sleeper = fx.callee("sleeper", ": > \"$1\"; exec sleep 100");
    fx.start();
    let ready = fx.path("work/ready");
    let child = with_default_signals(Command::new(&sleeper))
        .arg(&ready)
        .spawn()
        .unwrap();
    wait_for(&ready);
    std::thread::sleep(Duration::from_millis(50)); // let `exec sleep` happen
    kill(&child, libc::SIGTERM);
    let st = child.wait_with_output().unwrap().status;
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st:?}");
}

#[test]
fn callee_killed_by_sigkill_makes_the_stub_die_of_sigkill() {
    let mut fx = Fixture::new("sigkill");
    let suicide = fx.callee("suicide", "kill -KILL $$");
    fx.start();
    let st = with_default_signals(Command::new(&suicide))
        .status()
        .unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    assert!(!st.core_dumped());
}

#[test]
fn stop_and_continue_follow_the_callee() {
    let mut fx = Fixture::new("tstp");
    let job = fx.callee(
        "job",
        ": > \"$1\"; while [ ! -e \"$2\" ]; do sleep 0.02; done; exit 3",
    );
    fx.start();
    let (ready, go) = (fx.path("work/ready"), fx.path("work/go"));
    let child = with_default_signals(Command::new(&job))
        .arg(&ready)
        .arg(&go)
        .spawn()
        .unwrap();
    wait_for(&ready);
    kill(&child, libc::SIGTSTP);
    let t0 = Instant::now();
    while proc_state(child.id()) != 'T' {
        assert!(t0.elapsed() < Duration::from_secs(10), "stub never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(&child, libc::SIGCONT);
    std::fs::write(&go, "").unwrap();
    let st = child.wait_with_output().unwrap().status;
    assert_eq!(st.code(), Some(3), "{st:?}");
}
