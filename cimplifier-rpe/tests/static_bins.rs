//! The shipped binaries are static and the stub runs with no libc around.

mod common;
use common::{Fixture, static_bins};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

#[test]
fn binaries_have_no_interpreter_and_no_needed_libraries() {
    let bins = static_bins();
    for bin in [&bins.stub, &bins.server] {
        let bytes = std::fs::read(bin).unwrap();
        let elf = goblin::elf::Elf::parse(&bytes).unwrap();
        assert_eq!(elf.interpreter, None, "{} has PT_INTERP", bin.display());
        assert!(
            elf.libraries.is_empty(),
            "{} needs {:?}",
            bin.display(),
            elf.libraries
        );
    }
}

#[test]
fn stub_runs_in_an_empty_chroot() {
    let mut fx = Fixture::new("chroot");
    // run/ becomes the root: the stub, its config and the server's socket,
    // and nothing else (no libc, no /proc, no /dev).
    let jail = fx.path("run");
    std::fs::copy(&static_bins().stub, jail.join("callee")).unwrap();
    std::fs::write(
        jail.join(cimplifier_rpe::config::STUB_CONFIG_NAME),
        "socket = \"/rpe.sock\"\n",
    )
    .unwrap();
    let real = fx.script("callee", "echo \"outside, args: $*\"; exit 9");
    fx.allow_map(Path::new("/callee"), &real);
    fx.start();
    let mut cmd = Command::new("/callee");
    cmd.arg("a").arg("b");
    unsafe {
        cmd.pre_exec(move || {
            let dir = std::ffi::CString::new(jail.as_os_str().as_encoded_bytes()).unwrap();
            if libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "outside, args: a b\n");
}
