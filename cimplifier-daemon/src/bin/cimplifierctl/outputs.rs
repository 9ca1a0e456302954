//! Writing what emit sends back, as the user who runs cimplifierctl: the
//! daemon runs as root and never writes a path a client names, so the OCI
//! layout (`--oci-dir`) and the run plan (`--out`) come back over the API
//! and are written here.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where emit's outputs go on this side.
pub struct Outputs {
    /// The OCI layout's directory, made new (or empty) before the emit.
    oci_dir: Option<PathBuf>,
    /// The layout's tar as it arrives, spooled beside the layout.
    oci_spool: Option<std::fs::File>,
    /// The run plan's directory.
    out_dir: Option<PathBuf>,
    /// Where the Kubernetes run plan goes (`--k8s`), instead of `out_dir`.
    k8s_file: Option<PathBuf>,
}

/// The spooled tar's name inside the layout directory while it arrives.
const SPOOL: &str = ".cimplifier-oci.tar.partial";

impl Outputs {
    /// Checks and prepares the directories before any work: `oci_dir` must
    /// not exist or be empty (nothing of another image is mixed in).
    pub fn prepare(oci_dir: Option<&Path>, out_dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut outputs = Self {
            oci_dir: None,
            oci_spool: None,
            out_dir: out_dir.map(absolute),
            k8s_file: None,
        };
        if let Some(dir) = oci_dir {
            let dir = absolute(dir);
            match std::fs::read_dir(&dir) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        bail!(
                            "--oci-dir {}: the directory is not empty; give a new or empty directory",
                            dir.display()
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&dir).with_context(|| {
                        format!("--oci-dir {}: cannot create it", dir.display())
                    })?;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("--oci-dir {}", dir.display()));
                }
            }
            let spool = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(SPOOL))
                .with_context(|| format!("--oci-dir {}: cannot write in it", dir.display()))?;
            outputs.oci_spool = Some(spool);
            outputs.oci_dir = Some(dir);
        }
        Ok(outputs)
    }

    pub fn wants_oci(&self) -> bool {
        self.oci_dir.is_some()
    }

    /// The next piece of the OCI layout's tar.
    pub fn oci_chunk(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        let spool = self
            .oci_spool
            .as_mut()
            .context("the daemon sent an OCI layout that was not asked for")?;
        spool.write_all(chunk).context("spooling the OCI layout")
    }

    /// Writes the Kubernetes run plan to `file` (`--k8s FILE`).
    pub fn set_k8s_file(&mut self, file: &Path) {
        self.k8s_file = Some(absolute(file));
    }

    /// One file of the run plan: written under a temporary name, then
    /// renamed over any earlier one (a link there is replaced, not followed).
    pub fn plan_file(&mut self, name: &str, content: &[u8]) -> anyhow::Result<()> {
        if name == cimplifier::emit::partitioned::kubernetes::KUBERNETES_FILE
            && let Some(file) = &self.k8s_file
        {
            let (dir, name) = match (file.parent(), file.file_name()) {
                (Some(dir), Some(name)) => (dir, name.to_string_lossy().into_owned()),
                _ => bail!("--k8s {}: not a file name", file.display()),
            };
            return write_atomic(dir, &name, content);
        }
        let dir = self
            .out_dir
            .as_ref()
            .context("the daemon sent a run plan that was not asked for")?;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("the daemon sent a run plan file named {name:?}, not a plain file name");
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--out {}: cannot create it", dir.display()))?;
        write_atomic(dir, name, content)
    }

    /// Unpacks the spooled layout once the emit has ended; returns where
    /// it is.
    pub fn finish_oci(&mut self) -> anyhow::Result<Option<PathBuf>> {
        let (Some(dir), Some(spool)) = (self.oci_dir.clone(), self.oci_spool.take()) else {
            return Ok(None);
        };
        drop(spool);
        let spooled = dir.join(SPOOL);
        let file = std::fs::File::open(&spooled)?;
        let mut archive = tar::Archive::new(file);
        archive.set_overwrite(false);
        let unpacked = archive
            .unpack(&dir)
            .with_context(|| format!("writing the OCI layout into {}", dir.display()));
        std::fs::remove_file(&spooled)?;
        unpacked?;
        Ok(Some(dir))
    }

    /// The run plan's directory, when one was asked for.
    pub fn out_dir(&self) -> Option<&Path> {
        self.out_dir.as_deref()
    }

    /// Takes back what an emit that failed left half written.
    pub fn abandon(&mut self) {
        if let (Some(dir), Some(_)) = (&self.oci_dir, self.oci_spool.take()) {
            let _ = std::fs::remove_file(dir.join(SPOOL));
        }
    }
}

/// Writes `dir/name` under a temporary name, then renames it over any
/// earlier one (a link there is replaced, not followed).
fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> anyhow::Result<()> {
    let partial = dir.join(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    let path = dir.join(name);
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
