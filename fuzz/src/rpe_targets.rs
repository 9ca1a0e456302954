//! The bodies of the RPE glue's fuzz targets: what a caller partition (or a
//! server) can send, and the configuration files of the stub and server.
//! A compromised partition controls its side of the socket, so frames must
//! be rejected by length and content, never by a panic.
//! `cimplifier-rpe/tests/fuzz_replay.rs` includes this file to replay every
//! seed and past crash as ordinary tests; it uses only `cimplifier_rpe`.

use std::path::Path;

use cimplifier_rpe::config::{ServerConfig, StubConfig};
use cimplifier_rpe::proto::{ToServer, ToStub, read_frame, split_nul};

/// A stream of frames, read as the server reads a caller's and as the stub
/// reads the server's, until the first error or the end.
pub fn rpe_frame(data: &[u8]) {
    let mut server_side = data;
    while let Ok(Some(msg)) = read_frame::<_, ToServer>(&mut server_side) {
        if let ToServer::Request(r) = &msg {
            let _ = split_nul(&r.env).count();
            let _ = split_nul(&r.argv).count();
        }
    }
    let mut stub_side = data;
    while let Ok(Some(_)) = read_frame::<_, ToStub>(&mut stub_side) {}
}

/// The server's and the stub's TOML configuration.
pub fn rpe_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    if let Ok(server) = ServerConfig::parse(&text, path) {
        let _ = format!("{server:?}");
    }
    if let Ok(stub) = StubConfig::parse(&text, path) {
        let _ = stub.socket_for(Path::new("/usr/bin/x"), Path::new("/usr/bin/x"));
    }
}
