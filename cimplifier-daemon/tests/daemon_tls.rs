//! The daemon's optional TCP listener against a real `cimplifierd serve`:
//! it refuses plaintext TCP unless told `--insecure`, serves mutual TLS to
//! clients holding a certificate of its client CA, and refuses every other
//! client. Certificates are made with the openssl CLI. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cimplifier::api::{Address, ClientSecurity, ClientTls};
use common::{Daemon, require_root};

/// A CA, a server certificate for 127.0.0.1 and localhost, and client
/// certificates: one of the same CA, one of another CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Self { dir };
        std::fs::write(
            pki.path("req.cnf"),
            "[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nCN = unused\n",
        )
        .unwrap();
        std::fs::write(
            pki.path("ca.ext"),
            "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n",
        )
        .unwrap();
        std::fs::write(
            pki.path("server.ext"),
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(
            pki.path("client.ext"),
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
        )
        .unwrap();
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf("server", "ca", "server.ext");
        pki.leaf("client", "ca", "client.ext");
        pki.leaf("stranger", "other-ca", "client.ext");
        // For roles: one named by its common name, one by a DNS name.
        std::fs::write(
            pki.path("reader.ext"),
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = clientAuth\nsubjectAltName = DNS:reader.example\n",
        )
        .unwrap();
        pki.leaf("admin", "ca", "client.ext");
        pki.leaf("reader", "ca", "reader.ext");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("running the openssl CLI (apt-get install openssl; `cargo xtask setup` does)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn key(&self, name: &str) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ]);
    }

    /// A self-signed CA: NAME.pem, NAME.key.
    fn ca(&self, name: &str) {
        self.key(name);
        self.openssl(&[
            "req",
            "-new",
            "-config",
            "req.cnf",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN=cimplifier test {name}"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-key",
            &format!("{name}.key"),
            "-days",
            "2",
            "-extfile",
            "ca.ext",
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A certificate signed by `ca`: NAME.pem, NAME.key.
    fn leaf(&self, name: &str, ca: &str, ext: &str) {
        self.key(name);
        self.openssl(&[
            "req",
            "-new",
            "-config",
            "req.cnf",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN=cimplifier test {name}"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            ext,
            "-out",
            &format!("{name}.pem"),
        ]);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// cimplifierctl with only these arguments (no --socket).
fn ctl(args: &[&str]) -> Output {
    common::cimplifierctl()
        .args(args)
        .env_remove("CIMPLIFIER_SOCKET")
        .env_remove("CIMPLIFIER_ADDR")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the daemon answered `version`.
fn answered(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("cimplifierd 0.1.0"),
        "no version answer: {}\n{stdout}\n{}",
        out.status,
        stderr(out)
    );
}

/// Asserts the client was refused: exit 3 (unreachable), no answer.
fn refused(out: &Output, why: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("cimplifierd 0.1.0"),
        "{why}: but it got an answer: {stdout}"
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{why}: refused as unreachable: {}",
        stderr(out)
    );
}

#[test]
fn tcp_without_tls_files_or_insecure_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let out = common::cimplifierd()
        .args(["serve", "--config", "/dev/null"])
        .arg("--socket")
        .arg(dir.path().join("cimplifier.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen-tcp", &addr])
        .env_remove("CIMPLIFIER_TLS_CERT")
        .env_remove("CIMPLIFIER_TLS_KEY")
        .env_remove("CIMPLIFIER_TLS_CLIENT_CA")
        .output()
        .unwrap();
    assert!(!out.status.success(), "it refuses to start");
    let err = stderr(&out);
    for flag in ["--tls-cert", "--tls-key", "--tls-client-ca", "--insecure"] {
        assert!(err.contains(flag), "the error names {flag}: {err}");
    }
    assert!(err.contains("without mutual TLS"), "{err}");
    assert!(
        !dir.path().join("cimplifier.sock").exists(),
        "nothing is served"
    );
    assert!(
        std::net::TcpListener::bind(&addr).is_ok(),
        "nothing listens on {addr}"
    );

    // One file missing: that one is named.
    let pki = Pki::new();
    let out = common::cimplifierd()
        .args(["serve", "--config", "/dev/null"])
        .arg("--socket")
        .arg(dir.path().join("cimplifier.sock"))
        .args(["--listen-tcp", &addr])
        .args(["--tls-cert", &pki.arg("server.pem")])
        .args(["--tls-key", &pki.arg("server.key")])
        .env_remove("CIMPLIFIER_TLS_CLIENT_CA")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("missing --tls-client-ca"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_its_ca() {
    require_root();
    let pki = Pki::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(&[
        "--listen-tcp",
        &addr,
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
        "--tls-client-ca",
        &pki.arg("ca.pem"),
        "--tls-read-only-identity",
        "CN=cimplifier test client",
    ]);
    // The unix socket is still served (start_with waited on it).
    answered(&d.ctl(&["version"]));

    // (b) A client with a certificate of the client CA.
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    answered(&ctl(&[
        "--addr",
        &addr,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "version",
    ]));
    // By name too: the certificate names localhost.
    let by_name = addr.replace("127.0.0.1", "localhost");
    answered(&ctl(&[
        "--addr",
        &by_name,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "version",
    ]));
    // Health over TCP, with the library's client.
    let tls = |identity: Option<(&str, &str)>| Address::Tcp {
        addr: addr.clone(),
        security: ClientSecurity::Tls(ClientTls {
            ca: pki.path("ca.pem"),
            identity: identity.map(|(c, k)| (pki.path(c), pki.path(k))),
        }),
    };
    let channel = cimplifier::api::channel(tls(Some(("client.pem", "client.key"))))
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cimplifier.v1.Cimplifier".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // (c) No client certificate: refused.
    let out = ctl(&["--addr", &addr, "--tls-ca", &ca, "version"]);
    refused(&out, "a client without a certificate");
    assert!(stderr(&out).contains("--tls-cert"), "{}", stderr(&out));
    match cimplifier::api::connect(tls(None)).await {
        Err(_) => {}
        Ok(mut api) => {
            let e = api
                .version(cimplifier::api::pb::VersionRequest {})
                .await
                .expect_err("a client without a certificate gets no answer");
            assert_ne!(e.code(), tonic::Code::Ok);
        }
    }

    // (d) A client certificate of another CA: refused.
    refused(
        &ctl(&[
            "--addr",
            &addr,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &pki.arg("stranger.pem"),
            "--tls-key",
            &pki.arg("stranger.key"),
            "version",
        ]),
        "a client certificate of another CA",
    );

    // A daemon certificate the client's CA did not sign: the client refuses.
    let out = ctl(&[
        "--addr",
        &addr,
        "--tls-ca",
        &pki.arg("other-ca.pem"),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "version",
    ]);
    refused(&out, "a daemon certificate of another CA");
    assert!(stderr(&out).contains("--tls-ca"), "{}", stderr(&out));

    // Plaintext to a TLS listener: no answer.
    refused(
        &ctl(&["--addr", &addr, "--insecure", "version"]),
        "plaintext to a TLS listener",
    );

    // Usage errors: --addr without TLS or --insecure, --addr with --socket.
    let out = ctl(&["--addr", &addr, "version"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--tls-ca") && err.contains("--insecure"),
        "{err}"
    );
    let out = ctl(&[
        "--addr",
        &addr,
        "--socket",
        "/tmp/x.sock",
        "--insecure",
        "version",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// listen_tcp and the TLS files can come from the config file.
#[test]
fn the_config_file_configures_tcp() {
    require_root();
    let pki = Pki::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = pki.path("cimplifierd.toml");
    std::fs::write(
        &config,
        format!(
            "listen_tcp = \"{addr}\"\ntls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\n\
             tls_read_only_identities = [\"CN=cimplifier test client\"]\n",
            pki.arg("server.pem"),
            pki.arg("server.key"),
            pki.arg("ca.pem")
        ),
    )
    .unwrap();
    let _d = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    answered(&ctl(&[
        "--addr",
        &addr,
        "--tls-ca",
        &pki.arg("ca.pem"),
        "--tls-cert",
        &pki.arg("client.pem"),
        "--tls-key",
        &pki.arg("client.key"),
        "version",
    ]));
}

#[test]
fn insecure_serves_plaintext_tcp_when_asked() {
    require_root();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(&["--listen-tcp", &addr, "--insecure"]);
    answered(&ctl(&["--addr", &addr, "--insecure", "version"]));
    // A TLS client finds no TLS there.
    let pki = Pki::new();
    refused(
        &ctl(&[
            "--addr",
            &addr,
            "--tls-ca",
            &pki.arg("ca.pem"),
            "--tls-cert",
            &pki.arg("client.pem"),
            "--tls-key",
            &pki.arg("client.key"),
            "version",
        ]),
        "TLS to a plaintext listener",
    );
    drop(d);
}

/// `--insecure` is taken only from the command line: neither a config key
/// nor a `CIMPLIFIER_INSECURE` variable can turn off TLS, so plaintext TCP
/// is refused and nothing listens.
#[test]
fn insecure_from_the_config_or_the_environment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("cimplifierd.toml");
    let serve = |config: &Path| {
        let mut cmd = common::cimplifierd();
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(dir.path().join("cimplifier.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        cmd
    };

    std::fs::write(
        &config,
        format!("listen_tcp = \"{addr}\"\ninsecure = true\n"),
    )
    .unwrap();
    let out = serve(&config).output().unwrap();
    assert!(!out.status.success(), "a config's insecure key is refused");
    let err = stderr(&out);
    assert!(err.contains("unknown field `insecure`"), "{err}");

    std::fs::write(&config, format!("listen_tcp = \"{addr}\"\n")).unwrap();
    for value in ["true", "1"] {
        let out = serve(&config)
            .env("CIMPLIFIER_INSECURE", value)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "CIMPLIFIER_INSECURE={value} does not allow plaintext TCP"
        );
        let err = stderr(&out);
        assert!(err.contains("without mutual TLS"), "{err}");
    }
    assert!(
        !dir.path().join("cimplifier.sock").exists(),
        "nothing is served"
    );
    assert!(
        std::net::TcpListener::bind(&addr).is_ok(),
        "nothing listens on {addr}"
    );
}

/// A client certificate's role comes from its names: the config lists
/// them per role. One named nowhere is refused every call, a read-only one
/// may look but not act, an admin one may act. Each refusal is
/// PERMISSION_DENIED naming the certificate, the call, the role it needs
/// and the setting that grants it.
#[test]
fn mutual_tls_clients_get_the_role_their_names_are_listed_for() {
    require_root();
    let pki = Pki::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let _d = Daemon::start_with(&[
        "--listen-tcp",
        &addr,
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
        "--tls-client-ca",
        &pki.arg("ca.pem"),
        "--tls-admin-identity",
        "CN=cimplifier test admin",
        "--tls-read-only-identity",
        "DNS:reader.example",
    ]);
    let as_client = |name: &str, args: &[&str]| {
        let (ca, cert, key) = (
            pki.arg("ca.pem"),
            pki.arg(&format!("{name}.pem")),
            pki.arg(&format!("{name}.key")),
        );
        let mut all = vec![
            "--addr",
            &addr,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        all.extend(args);
        ctl(&all)
    };
    let denied = |out: &Output, says: &[&str]| {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(8), "refused as denied: {err}");
        for s in says {
            assert!(err.contains(s), "the refusal says {s:?}: {err}");
        }
    };

    // Named nowhere: refused even looking, and told what would grant it.
    denied(
        &as_client("client", &["sessions"]),
        &[
            "CN=cimplifier test client",
            "has no role",
            "ListSessions needs the read-only role",
            "tls_read_only_identities",
        ],
    );

    // Read-only by its DNS name: may look, may not act.
    let listed = as_client("reader", &["sessions"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    answered(&as_client("reader", &["version"]));
    denied(
        &as_client(
            "reader",
            &["emit", "any", "--tag", "cimplifier-e2e/never:latest"],
        ),
        &[
            "DNS:reader.example",
            "has the read-only role",
            "Emit needs the admin role",
            "tls_admin_identities (--tls-admin-identity, CIMPLIFIER_TLS_ADMIN_IDENTITIES)",
        ],
    );
    denied(
        &as_client("reader", &["observe", "any"]),
        &["Observe needs the admin role"],
    );

    // Admin by its common name: its calls get through to the daemon, which
    // answers for the session (none here).
    let stop = as_client("admin", &["stop", "no-such-session"]);
    assert_eq!(stop.status.code(), Some(4), "{}", stderr(&stop));
    let rm = as_client("admin", &["sessions", "rm", "no-such-session"]);
    assert_eq!(rm.status.code(), Some(4), "{}", stderr(&rm));
}
