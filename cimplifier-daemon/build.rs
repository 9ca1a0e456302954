//! Builds the kernel programs (`cimplifier-ebpf`) and embeds the object.
//! Set CIMPLIFIER_EBPF_OBJECT to use a prebuilt object instead.

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("cimplifier.bpf.o");
    println!("cargo:rerun-if-env-changed=CIMPLIFIER_EBPF_OBJECT");

    let object = match env::var("CIMPLIFIER_EBPF_OBJECT") {
        Ok(prebuilt) => {
            println!("cargo:rerun-if-changed={prebuilt}");
            PathBuf::from(prebuilt)
        }
        Err(_) => {
            for dir in [
                "cimplifier-ebpf/src",
                "cimplifier-ebpf/Cargo.toml",
                "cimplifier-common/src",
            ] {
                println!("cargo:rerun-if-changed={}", root.join(dir).display());
            }
            let target_dir = root.join("target").join("ebpf");
            cimplifier_ebpf_build::build(&root.join("cimplifier-ebpf"), &target_dir, true)
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    std::fs::copy(&object, &out).unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
}
