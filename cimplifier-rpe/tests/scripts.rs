//! A stub that stands at a script's `#!` interpreter: the kernel runs it
//! with argv [interpreter, (arg), script, args...] and AT_EXECFN naming
//! the script. The call is the interpreter's, and it is checked and run as
//! such.

mod common;
use common::{Fixture, sh};

#[test]
fn a_stub_run_as_a_scripts_interpreter_forwards_the_interpreter() {
    let mut fx = Fixture::new("interp");
    // bin/interp is a stub for the real /bin/sh; only it is allowed.
    let interp = fx.callee_exec("interp", std::path::Path::new("/bin/sh"));
    fx.start();
    // The script lies in the caller's partition, not among the stubs.
    let script = fx.path("work/job");
    std::fs::write(
        &script,
        format!("#!{} -e\nprintf '[%s]' \"$0\" \"$@\"\n", interp.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for run in [
        script.display().to_string(),
        // Relative: the kernel's AT_EXECFN is relative too.
        format!("cd {} && ./job", fx.path("work").display()),
    ] {
        let out = sh(&format!("{run} 'a b' c")).output().unwrap();
        assert!(
            out.status.success(),
            "{run}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = if run.starts_with("cd ") {
            "./job".to_owned()
        } else {
            script.display().to_string()
        };
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("[{shown}][a b][c]"),
            "the interpreter got the script and its arguments"
        );
    }
}

#[test]
fn a_script_run_through_its_own_stub_is_still_the_script() {
    // The script's path holds the stub (the script is in the callee
    // partition): the call is the script's, as before.
    let mut fx = Fixture::new("scriptstub");
    let job = fx.callee("job", "printf '[%s]' \"$@\"");
    fx.start();
    let out = sh(&format!("{} x", job.display())).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[x]");
}
