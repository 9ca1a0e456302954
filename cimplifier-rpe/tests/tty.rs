//! A caller on a terminal: the callee gets a controlling terminal of its
//! own (a pty the stub relays to the caller's), with the caller's window
//! size, and the caller's keys reach it, ^C included.

mod common;

use common::Fixture;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A pty whose slave becomes the controlling terminal of `program`.
fn on_terminal(program: &Path, rows: u16, cols: u16) -> (Child, std::fs::File) {
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty into locals.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let mut cmd = common::with_default_signals(Command::new(program));
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(slave);
    (child, unsafe { std::fs::File::from_raw_fd(master) })
}

/// Everything the terminal shows, read on a thread (EIO ends it).
fn reader(mut master: std::fs::File) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_text(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut String, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => panic!("the terminal never showed {want:?}; it showed {seen:?}"),
        }
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "the stub did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_callee_has_a_controlling_terminal_with_the_callers_size_and_input() {
    let mut f = Fixture::new("tty-ctty");
    let callee = f.callee(
        "interactive",
        "exec 3</dev/tty && echo HAVE-CTTY; stty size; read line; echo \"got:$line\"",
    );
    f.start();
    let (mut stub, master) = on_terminal(&callee, 33, 111);
    let mut keys = master.try_clone().unwrap();
    let rx = reader(master);
    let mut seen = String::new();
    wait_for_text(&rx, &mut seen, "33 111");
    assert!(
        seen.contains("HAVE-CTTY"),
        "/dev/tty opens in the callee: {seen:?}"
    );
    keys.write_all(b"hello\r").unwrap();
    wait_for_text(&rx, &mut seen, "got:hello");
    let st = wait_exit(&mut stub);
    assert_eq!(st.code(), Some(0), "{st:?}: {seen:?}");
}

#[test]
fn control_c_on_the_callers_terminal_interrupts_the_callee() {
    let mut f = Fixture::new("tty-intr");
    let callee = f.callee("sleeper", "echo READY; exec sleep 30");
    f.start();
    let (mut stub, master) = on_terminal(&callee, 24, 80);
    let mut keys = master.try_clone().unwrap();
    let rx = reader(master);
    let mut seen = String::new();
    wait_for_text(&rx, &mut seen, "READY");
    std::thread::sleep(Duration::from_millis(200));
    keys.write_all(&[0x03]).unwrap();
    let st = wait_exit(&mut stub);
    assert_eq!(
        st.signal(),
        Some(libc::SIGINT),
        "the stub dies of the callee's SIGINT: {st:?}"
    );
    // The terminal is back in its original (cooked) mode.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::tcgetattr(keys.as_raw_fd(), &mut tio) }, 0);
    assert_ne!(tio.c_lflag & libc::ICANON, 0, "ICANON restored");
}
