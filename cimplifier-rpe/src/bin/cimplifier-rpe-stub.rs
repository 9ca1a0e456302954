//! The RPE stub, installed at a callee's path in the caller partition.
// No Rust start-up: it would reopen closed fds 0-2 and ignore SIGPIPE, and
// the callee must inherit the caller's state untouched.
#![no_main]

use std::ffi::{c_char, c_int};

#[unsafe(no_mangle)]
extern "C" fn main(argc: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: these are the C runtime's own arguments, and nothing ran before.
    unsafe { cimplifier_rpe::stub::run(argc, argv, envp) }
}
