//! Shared by the tests and the benchmark: builds the static binaries and
//! runs a real server with a real stub.
#![allow(dead_code)]

use cimplifier_rpe::config::{PartitionConfig, STUB_CONFIG_NAME, ServerConfig, StubConfig};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Bins {
    pub stub: PathBuf,
    pub server: PathBuf,
}

/// Builds the stub and server statically, the way cimplifierd's build
/// script does (cimplifier-build), into the same target dir, so the two
/// share one cached build.
pub fn static_bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"))
            .join("rpe-static");
        let built = cimplifier_build::rpe::build_static(&workspace, &target_dir)
            .unwrap_or_else(|e| panic!("{e}"));
        Bins {
            stub: built.stub,
            server: built.server,
        }
    })
}

/// A temporary tree: `bin/` holds stubs (hard links of the static stub) and
/// their config, `real/` the callees' scripts, `run/` the socket.
pub struct Fixture {
    pub root: PathBuf,
    pub partition: String,
    allow: Vec<PathBuf>,
    map: BTreeMap<PathBuf, PathBuf>,
    server: Option<Child>,
    /// TOML appended to the server's `[[partition]]` table, e.g. a
    /// `[partition.permit]` table.
    pub extra_toml: String,
    /// The socket, relative to the root.
    pub socket_rel: &'static str,
    /// The umask the server starts with (the test's own if None).
    pub server_umask: Option<libc::mode_t>,
}

impl Fixture {
    pub fn new(name: &str) -> Fixture {
        let root = std::env::temp_dir().join(format!("rpe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "real", "run", "work"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for d in ["", "bin", "real", "run", "work"] {
            std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Fixture {
            root,
            partition: format!("caller-{name}"),
            allow: Vec::new(),
            map: BTreeMap::new(),
            server: None,
            extra_toml: String::new(),
            socket_rel: "run/rpe.sock",
            server_umask: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join(self.socket_rel)
    }

    /// Installs a stub at `bin/<name>` without allowing it.
    pub fn stub(&self, name: &str) -> PathBuf {
        let p = self.root.join("bin").join(name);
        if std::fs::hard_link(&static_bins().stub, &p).is_err() {
            std::fs::copy(&static_bins().stub, &p).unwrap();
        }
        p
    }

    /// A stub `bin/<name>` that runs `target` in the "callee partition".
    pub fn callee_exec(&mut self, name: &str, target: &Path) -> PathBuf {
        let p = self.stub(name);
        self.allow.push(p.clone());
        self.map.insert(p.clone(), target.to_path_buf());
        p
    }

    /// Allows `requested` (as the stub will name it) to run `target`.
    pub fn allow_map(&mut self, requested: &Path, target: &Path) {
        self.allow.push(requested.to_path_buf());
        self.map
            .insert(requested.to_path_buf(), target.to_path_buf());
    }

    /// Writes `real/<name>` with the shell script `body`.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let real = self.root.join("real").join(name);
        std::fs::write(&real, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        real
    }

    /// A stub `bin/<name>` that runs the shell script `body`.
    pub fn callee(&mut self, name: &str, body: &str) -> PathBuf {
        let real = self.script(name, body);
        self.callee_exec(name, &real)
    }

    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            partitions: vec![PartitionConfig {
                name: self.partition.clone(),
                socket: self.socket(),
                allow: self.allow.clone(),
                map: self.map.clone(),
                // Every other key at its default (the file's own default,
                // as the server reads it).
                ..toml::from_str("name = \"\"\nsocket = \"/\"\nallow = []").unwrap()
            }],
        }
    }

    /// Writes both configs and starts the server; waits for its socket.
    pub fn start(&mut self) {
        let stub_cfg = StubConfig::single(self.socket());
        std::fs::write(
            self.root.join("bin").join(STUB_CONFIG_NAME),
            toml::to_string(&stub_cfg).unwrap(),
        )
        .unwrap();
        let cfg_path = self.root.join("server.toml");
        let text = toml::to_string(&self.server_config()).unwrap() + "\n" + &self.extra_toml;
        std::fs::write(&cfg_path, text).unwrap();
        let mut cmd = with_default_signals(Command::new(&static_bins().server));
        if let Some(mask) = self.server_umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask);
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&cfg_path)
            .spawn()
            .expect("cannot start cimplifier-rpe-server");
        self.server = Some(child);
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "server did not listen on {}",
                self.socket().display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The server's pid, while it runs.
    pub fn server_pid(&mut self) -> Option<u32> {
        let c = self.server.as_mut()?;
        c.try_wait().ok().flatten().is_none().then(|| c.id())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SIGTERM: the server passes it on to callees still running, so
        // none outlives the test holding its stdout.
        if let Some(mut c) = self.server.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t0.elapsed() > Duration::from_secs(5) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `cmd` with every catchable signal at its default disposition and
/// unblocked: a test run under `nohup`, or as a background job, inherits
/// SIGHUP or SIGINT ignored, and ignored signals stay ignored across exec
/// (the stub and server rightly keep them so).
pub fn with_default_signals(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for sig in 1..libc::SIGRTMIN() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    cmd
}

/// `sh -c script` with a clean, small environment.
pub fn sh(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(script);
    c
}
