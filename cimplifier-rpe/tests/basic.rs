//! Redirections, pipes, stdin, exit codes and the allow-list, through a
//! real server and real stubs.

mod common;
use common::{Fixture, sh};
use std::process::Stdio;

#[test]
fn stdout_redirect_to_a_file() {
    let mut fx = Fixture::new("redirect");
    let hello = fx.callee("hello", "echo \"hello $1\"");
    fx.start();
    let out = fx.path("work/out.txt");
    let st = sh(&format!("{} world > {}", hello.display(), out.display()))
        .status()
        .unwrap();
    assert!(st.success(), "{st:?}");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "hello world\n");
}

#[test]
fn stub_in_a_pipeline_and_stdin_passthrough() {
    let mut fx = Fixture::new("pipe");
    let upper = fx.callee("upper", "tr a-z A-Z");
    let produce = fx.callee("produce", "printf 'one\\ntwo\\nthree\\n'");
    fx.start();
    // Stubs on both sides of a pipe.
    let out = sh(&format!(
        "{} | {} | sort -r",
        produce.display(),
        upper.display()
    ))
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "TWO\nTHREE\nONE\n");

    // stdin given by the test process itself.
    let mut child = std::process::Command::new(&upper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the stub\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "THROUGH THE STUB\n");
}

#[test]
fn every_exit_code_comes_back() {
    let mut fx = Fixture::new("codes");
    let code = fx.callee("code", "exit \"$1\"");
    fx.start();
    for c in 0..=255 {
        let st = std::process::Command::new(&code)
            .arg(c.to_string())
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(c), "exit code {c} came back as {st:?}");
    }
}

#[test]
fn argv0_and_arguments_are_exact() {
    let mut fx = Fixture::new("argv");
    let args = fx.callee_exec("args", std::path::Path::new("/bin/sh"));
    fx.start();
    let out = std::process::Command::new(&args)
        .args(["-c", "printf '[%s]' \"$0\" \"$@\"", "zero", "", "a b", "*"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[zero][][a b][*]");
}

#[test]
fn outside_the_allow_list_is_refused() {
    let mut fx = Fixture::new("refuse");
    fx.callee("fine", "true");
    let forbidden = fx.stub("forbidden");
    fx.start();
    let out = std::process::Command::new(&forbidden).output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&forbidden.display().to_string()), "{err}");
    assert!(err.contains(&fx.partition), "{err}");
    assert!(err.contains("allow-list"), "{err}");
}

#[test]
fn missing_callee_is_127_and_no_server_is_126() {
    let mut fx = Fixture::new("missing");
    let gone = fx.callee_exec("gone", std::path::Path::new("/nonexistent/prog"));
    fx.start();
    let out = std::process::Command::new(&gone).output().unwrap();
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/prog"));
    drop(fx);

    let mut fx = Fixture::new("noserver");
    let lonely = fx.callee("lonely", "true");
    fx.start();
    std::fs::remove_file(fx.socket()).unwrap();
    let out = std::process::Command::new(&lonely).output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rpe.sock"));
}
