//! Builds the kernel programs (`cimplifier-ebpf`) and embeds the object
//! (set CIMPLIFIER_EBPF_OBJECT to use a prebuilt object instead), and
//! generates the gRPC code from proto/ (protox, so no protoc is needed).

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("cimplifier.bpf.o");
    println!("cargo:rerun-if-env-changed=CIMPLIFIER_EBPF_OBJECT");

    let proto_dir = root.join("proto");
    let proto = proto_dir.join("cimplifier/v1/cimplifier.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&proto_dir])
        .unwrap_or_else(|e| panic!("compiling {}: {e}", proto.display()));
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating gRPC code for {}: {e}", proto.display()));

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
