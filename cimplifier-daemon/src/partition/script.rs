//! Test support: event sequences as the tracer would record them (fork,
//! execve, openat, mkdir, bind, connect), built step by step.

use std::net::SocketAddr;

use cimplifier_common::syscalls::{self, nr};

use crate::model::Model;
use crate::trace::{
    CgroupId, ContainerPath, Event, EventKind, PathArg, PathRole, Resolution, SocketAddress,
    SyscallEvent,
};

const AT_FDCWD: u64 = -100i64 as u64;
const O_RDONLY: u64 = 0;
const O_WRONLY: u64 = 0o1;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;

#[derive(Default)]
pub(crate) struct Script {
    events: Vec<Event>,
    last_pid: u32,
}

impl Script {
    pub fn model(&self) -> Model {
        Model::from_events(&self.events)
    }

    /// The model with `tree` as the image (symlinks, `#!` lines, kinds).
    pub fn model_with_tree(&self, tree: Box<dyn crate::model::ImageTree>) -> Model {
        let mut m = Model::with_image_tree(tree);
        for e in &self.events {
            m.apply(e);
        }
        m
    }

    fn push(&mut self, pid: u32, kind: EventKind) {
        self.events.push(Event {
            ts_ns: self.events.len() as u64 * 1000,
            pid,
            tid: pid,
            ppid: 1,
            cgroup: CgroupId(7),
            comm: "t".into(),
            kind,
        });
    }

    fn syscall(
        &mut self,
        pid: u32,
        n: u32,
        args: [u64; 6],
        paths: Vec<PathArg>,
        addr: Option<SocketAddress>,
    ) {
        self.push(
            pid,
            EventKind::Syscall(Box::new(SyscallEvent {
                syscall: syscalls::name(n).to_owned(),
                nr: n,
                args,
                ret: Some(if n == nr::OPENAT { 3 } else { 0 }),
                errno: None,
                paths,
                fd_path: None,
                fd_addr: None,
                addr,
                argv: None,
                incomplete: vec![],
            })),
        );
    }

    /// A process that execs `exe`, its parent unobserved (the container's
    /// first process). Returns its pid.
    pub fn start(&mut self, exe: &str) -> u32 {
        self.last_pid += 1;
        let pid = self.last_pid;
        self.exec(pid, exe);
        pid
    }

    /// `parent` forks a child that execs `exe`. Returns the child's pid.
    pub fn spawn(&mut self, parent: u32, exe: &str) -> u32 {
        self.last_pid += 1;
        let child = self.last_pid;
        self.push(
            parent,
            EventKind::Fork {
                child_pid: child,
                child_tid: child,
                thread: false,
                clone_flags: 17, // SIGCHLD: a plain fork
            },
        );
        self.exec(child, exe);
        child
    }

    fn exec(&mut self, pid: u32, exe: &str) {
        self.syscall(
            pid,
            nr::EXECVE,
            [0; 6],
            vec![arg(PathRole::Target, exe)],
            None,
        );
    }

    pub fn read(&mut self, pid: u32, path: &str) -> &mut Self {
        let args = [AT_FDCWD, 0, O_RDONLY, 0, 0, 0];
        self.syscall(
            pid,
            nr::OPENAT,
            args,
            vec![arg(PathRole::Target, path)],
            None,
        );
        self
    }

    /// Opens an existing file for writing.
    pub fn write(&mut self, pid: u32, path: &str) -> &mut Self {
        let args = [AT_FDCWD, 0, O_WRONLY, 0, 0, 0];
        self.syscall(
            pid,
            nr::OPENAT,
            args,
            vec![arg(PathRole::Target, path)],
            None,
        );
        self
    }

    /// open(O_WRONLY|O_CREAT|O_TRUNC): creates the file.
    pub fn create(&mut self, pid: u32, path: &str) -> &mut Self {
        let args = [AT_FDCWD, 0, O_WRONLY | O_CREAT | O_TRUNC, 0o644, 0, 0];
        self.syscall(
            pid,
            nr::OPENAT,
            args,
            vec![arg(PathRole::Target, path)],
            None,
        );
        self
    }

    pub fn stat(&mut self, pid: u32, path: &str) -> &mut Self {
        self.syscall(
            pid,
            nr::NEWFSTATAT,
            [AT_FDCWD, 0, 0, 0, 0, 0],
            vec![arg(PathRole::Target, path)],
            None,
        );
        self
    }

    pub fn mkdir(&mut self, pid: u32, path: &str) -> &mut Self {
        let args = [AT_FDCWD, 0, 0o755, 0, 0, 0];
        self.syscall(
            pid,
            nr::MKDIRAT,
            args,
            vec![arg(PathRole::Target, path)],
            None,
        );
        self
    }

    pub fn chmod(&mut self, pid: u32, path: &str) -> &mut Self {
        let args = [AT_FDCWD, 0, 0o777, 0, 0, 0];
        self.syscall(
            pid,
            nr::FCHMODAT,
            args,
            vec![arg(PathRole::Target, path)],
            None,
        );
        self
    }

    pub fn bind_unix(&mut self, pid: u32, path: &str) -> &mut Self {
        self.syscall(pid, nr::BIND, [3, 0, 0, 0, 0, 0], vec![], Some(unix(path)));
        self
    }

    pub fn connect_unix(&mut self, pid: u32, path: &str) -> &mut Self {
        self.syscall(
            pid,
            nr::CONNECT,
            [4, 0, 0, 0, 0, 0],
            vec![],
            Some(unix(path)),
        );
        self
    }

    pub fn bind_inet(&mut self, pid: u32, addr: &str) -> &mut Self {
        self.syscall(pid, nr::BIND, [3, 0, 0, 0, 0, 0], vec![], Some(inet(addr)));
        self
    }

    pub fn connect_inet(&mut self, pid: u32, addr: &str) -> &mut Self {
        self.syscall(
            pid,
            nr::CONNECT,
            [4, 0, 0, 0, 0, 0],
            vec![],
            Some(inet(addr)),
        );
        self
    }
}

fn arg(role: PathRole, path: &str) -> PathArg {
    PathArg {
        role,
        raw: path.to_owned(),
        path: ContainerPath::new(path),
        resolution: Resolution::Resolved,
        truncated: false,
    }
}

fn unix(path: &str) -> SocketAddress {
    SocketAddress::Unix {
        raw: path.to_owned(),
        path: ContainerPath::new(path),
    }
}

fn inet(addr: &str) -> SocketAddress {
    let addr: SocketAddr = addr.parse().expect("socket address");
    SocketAddress::Inet { addr }
}

/// The paper's running example, small: a start-up script makes a TLS key
/// with openssl and starts MySQL and Apache; PHP under Apache talks to
/// MySQL on its unix socket and over TCP, and has ImageMagick's convert
/// make thumbnails of uploads.
pub(crate) fn wiki() -> Script {
    let mut s = Script::default();
    let init = s.start("/entrypoint.sh");
    s.read(init, "/etc/wiki/settings.conf");
    let ssl = s.spawn(init, "/usr/bin/openssl");
    s.read(ssl, "/usr/lib/ssl/openssl.cnf")
        .create(ssl, "/etc/ssl/private/wiki.key");
    let cat = s.spawn(init, "/bin/cat");
    s.read(cat, "/etc/motd");
    let db = s.spawn(init, "/usr/sbin/mysqld");
    s.read(db, "/etc/mysql/my.cnf")
        .mkdir(db, "/run/mysqld")
        .bind_unix(db, "/run/mysqld/mysqld.sock")
        .bind_inet(db, "0.0.0.0:3306")
        .write(db, "/var/lib/mysql/ibdata1");
    let web = s.spawn(init, "/usr/sbin/apache2");
    s.read(web, "/etc/apache2/apache2.conf")
        .read(web, "/etc/ssl/private/wiki.key")
        .bind_inet(web, "0.0.0.0:443");
    let php = s.spawn(web, "/usr/bin/php");
    s.read(php, "/var/www/wiki/index.php")
        .read(php, "/etc/wiki/settings.conf")
        .connect_unix(php, "/run/mysqld/mysqld.sock")
        .connect_inet(php, "127.0.0.1:3306")
        .create(php, "/var/www/wiki/images/up.png");
    let convert = s.spawn(php, "/usr/bin/convert");
    s.read(convert, "/var/www/wiki/images/up.png")
        .read(convert, "/etc/ImageMagick-6/policy.xml")
        .create(convert, "/var/www/wiki/images/thumb/up.png");
    s
}
