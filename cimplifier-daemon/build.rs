//! Builds the kernel programs (`cimplifier-ebpf`) and embeds the object
//! (set CIMPLIFIER_EBPF_OBJECT to use a prebuilt object instead); builds
//! the static RPE stub and server (`cimplifier-rpe`) and embeds them (set
//! CIMPLIFIER_RPE_STUB and CIMPLIFIER_RPE_SERVER to use prebuilt ones,
//! which must be static too); and generates the gRPC code from proto/
//! (protox, so no protoc is needed).

use std::env;
use std::path::{Path, PathBuf};

use cimplifier_build::glue::GlueBinary;
use cimplifier_build::rpe::{self, StaticGlue};

/// Prebuilt glue for packagers: both or neither.
const RPE_STUB_ENV: &str = "CIMPLIFIER_RPE_STUB";
const RPE_SERVER_ENV: &str = "CIMPLIFIER_RPE_SERVER";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let out = out_dir.join("cimplifier.bpf.o");
    println!("cargo:rerun-if-env-changed=CIMPLIFIER_EBPF_OBJECT");

    let proto_dir = root.join("proto");
    let proto = proto_dir.join("cimplifier/v1/cimplifier.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&proto_dir])
        .unwrap_or_else(|e| panic!("compiling {}: {e}", proto.display()));
    // Every RPC by path, for the test that each has a role (api/authz.rs).
    let mut rpcs = String::from("pub const PROTO_RPCS: &[&str] = &[\n");
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                rpcs += &format!(
                    "    \"/{}.{}/{}\",\n",
                    file.package(),
                    service.name(),
                    method.name()
                );
            }
        }
    }
    rpcs += "];\n";
    std::fs::write(out_dir.join("proto_rpcs.rs"), rpcs)
        .unwrap_or_else(|e| panic!("writing proto_rpcs.rs: {e}"));
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
            cimplifier_build::ebpf::build(&root.join("cimplifier-ebpf"), &target_dir, true)
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    std::fs::copy(&object, &out).unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));

    let glue = static_glue(root);
    for bin in GlueBinary::ALL {
        let from = glue.path(bin);
        std::fs::copy(from, out_dir.join(bin.file_name()))
            .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    }
}

/// The static RPE stub and server: prebuilt ones from the environment, or
/// a nested release build into target/rpe-static (its own target dir: the
/// outer cargo holds the lock of the one it builds into). Cargo caches it,
/// so it is rebuilt only when cimplifier-rpe's sources change. Either way
/// they are checked here (a build that cannot emit working glue fails
/// now), and again by emit.
fn static_glue(root: &Path) -> StaticGlue {
    println!("cargo:rerun-if-env-changed={RPE_STUB_ENV}");
    println!("cargo:rerun-if-env-changed={RPE_SERVER_ENV}");
    match (env::var_os(RPE_STUB_ENV), env::var_os(RPE_SERVER_ENV)) {
        (Some(stub), Some(server)) => {
            let glue = StaticGlue {
                stub: stub.into(),
                server: server.into(),
            };
            for (bin, var) in [
                (GlueBinary::Stub, RPE_STUB_ENV),
                (GlueBinary::Server, RPE_SERVER_ENV),
            ] {
                println!("cargo:rerun-if-changed={}", glue.path(bin).display());
                rpe::check_file(glue.path(bin))
                    .unwrap_or_else(|e| panic!("{var} gives the {bin}: {e}"));
            }
            glue
        }
        (None, None) => {
            for path in rpe::sources(root) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            rpe::build_static(root, &root.join("target").join("rpe-static"))
                .unwrap_or_else(|e| panic!("{e}"))
        }
        _ => panic!(
            "set both {RPE_STUB_ENV} and {RPE_SERVER_ENV} (prebuilt static RPE binaries), \
             or neither to build them here"
        ),
    }
}
