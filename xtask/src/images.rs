//! `cargo xtask images`: local Docker test images, built from Debian packages.
//!
//! No registry is reachable, so the base image comes from debootstrap and the
//! others are `docker build`s on top of it. Every image is labelled with the
//! hash of its recipe and rebuilt only when that hash changes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::util::{self, Step, cmd};

pub const BASE_IMAGE: &str = "cimplifier-test/base:bookworm";
pub const HASH_LABEL: &str = "io.cimplifier.recipe-hash";
const SUITE: &str = "bookworm";
const VARIANT: &str = "minbase";
/// Bump to force every base image to be rebuilt after changing how it is made.
const BASE_RECIPE_VERSION: u32 = 1;

/// Test images built from tests/images/<name>/Dockerfile, in build order.
pub const DERIVED: &[&str] = &[
    "nginx",
    "redis",
    "flask",
    "wordpress",
    "mariadb",
    "notes",
    "mail",
    "tomcat",
];

pub fn tag(name: &str) -> String {
    format!("cimplifier-test/{name}:latest")
}

pub fn run(force: bool) -> Result<()> {
    util::ensure_root("images")?;
    let _all = Step::new("images");
    let mirror = debian_mirror()?;
    base_image(&mirror, force)?;
    let base_id = util::capture(&mut cmd(
        "docker",
        ["image", "inspect", "-f", "{{.Id}}", BASE_IMAGE],
    ))?;
    let dir = util::repo_root().join("tests").join("images");
    for name in DERIVED {
        derived_image(name, &dir.join(name), &base_id, force)?;
    }
    Ok(())
}

/// The recipe-hash label of a local image, or None if there is no such image.
fn image_label(image: &str) -> Result<Option<String>> {
    let format = format!("{{{{index .Config.Labels \"{HASH_LABEL}\"}}}}");
    let out = util::probe(&mut cmd(
        "docker",
        ["image", "inspect", "-f", &format, image],
    ))?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// Whether `image` exists with `hash` as its label (prints the verdict).
fn up_to_date(image: &str, hash: &str, force: bool) -> Result<bool> {
    let label = image_label(image)?;
    let verdict = match (&label, force) {
        (_, true) => "rebuilding (--force)",
        (None, _) => "not built yet",
        (Some(l), _) if l == hash => {
            println!("{image}: up to date (recipe {})", &hash[..12]);
            return Ok(true);
        }
        (Some(_), _) => "recipe changed",
    };
    println!("{image}: {verdict}, building (recipe {})", &hash[..12]);
    Ok(false)
}

fn base_image(mirror: &str, force: bool) -> Result<()> {
    let hash = hex(&Sha256::digest(format!(
        "cimplifier base image v{BASE_RECIPE_VERSION}\ndebootstrap --variant={VARIANT} {SUITE} ROOTFS {mirror}\n"
    )));
    if up_to_date(BASE_IMAGE, &hash, force)? {
        return Ok(());
    }
    let work = PathBuf::from(format!("/var/tmp/cimplifier-rootfs-{}", std::process::id()));
    let rootfs = work.join("rootfs");
    let result = (|| {
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        {
            let _step = Step::new(format!(
                "debootstrap --variant={VARIANT} {SUITE} from {mirror}"
            ));
            util::run(
                Command::new("debootstrap")
                    .arg(format!("--variant={VARIANT}"))
                    .arg(SUITE)
                    .arg(&rootfs)
                    .arg(mirror),
            )?;
        }
        let _step = Step::new(format!("docker import {BASE_IMAGE}"));
        import(&rootfs, &hash)
    })();
    let cleanup = remove_rootfs(&work);
    result?;
    cleanup
}

/// `tar -C ROOTFS -c . | docker import --change 'LABEL ...' - BASE_IMAGE`
fn import(rootfs: &Path, hash: &str) -> Result<()> {
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "-c", "."]);
    let mut import = cmd(
        "docker",
        [
            "import",
            "--change",
            &format!("LABEL {HASH_LABEL}={hash}"),
            "--change",
            "CMD [\"/bin/bash\"]",
            "-",
            BASE_IMAGE,
        ],
    );
    let (tar_line, import_line) = (util::display(&tar), util::display(&import));
    println!("+ {tar_line} | {import_line}");
    let mut tar_child = tar
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{tar_line}`"))?;
    let pipe = tar_child.stdout.take().expect("tar stdout is piped");
    let import_status = import
        .stdin(pipe)
        .status()
        .with_context(|| format!("could not start `{import_line}`"));
    let tar_status = tar_child
        .wait()
        .with_context(|| format!("waiting for `{tar_line}`"))?;
    let import_status = import_status?;
    if !tar_status.success() {
        bail!("`{tar_line}` failed ({tar_status})");
    }
    if !import_status.success() {
        bail!("`{import_line}` failed ({import_status})");
    }
    Ok(())
}

/// Removes the debootstrap work directory, unmounting anything a failed
/// debootstrap left mounted inside it first (never delete through /proc).
fn remove_rootfs(work: &Path) -> Result<()> {
    if !work.exists() {
        return Ok(());
    }
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let prefix = format!("{}/", work.display());
    let mut inside: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    inside.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in &inside {
        util::run(&mut cmd("umount", ["-l", mount]))?;
    }
    std::fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))
}

fn derived_image(name: &str, dir: &Path, base_id: &str, force: bool) -> Result<()> {
    let image = tag(name);
    if !dir.join("Dockerfile").is_file() {
        bail!("{} is missing", dir.join("Dockerfile").display());
    }
    let hash = recipe_hash(dir, base_id)?;
    if up_to_date(&image, &hash, force)? {
        return Ok(());
    }
    let _step = Step::new(format!("docker build {image}"));
    util::run(
        cmd("docker", ["build", "--network", "host", "--label"])
            .arg(format!("{HASH_LABEL}={hash}"))
            .args(["--tag", &image])
            .arg(dir),
    )
}

/// sha256 over every file of the recipe directory (relative path and
/// contents, in sorted order) and the id of the base image.
fn recipe_hash(dir: &Path, base_id: &str) -> Result<String> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for rel in &files {
        let path = dir.join(rel);
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let rel = rel.to_string_lossy();
        hasher.update((rel.len() as u64).to_le_bytes());
        hasher.update(rel.as_bytes());
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(&data);
    }
    hasher.update(b"base:");
    hasher.update(base_id.as_bytes());
    Ok(hex(&hasher.finalize()))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("stat {}", path.display()))?;
        if kind.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).expect("below root").to_path_buf());
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Debian mirror apt uses: the first `deb` source (one-line `.list`
/// format or deb822 `.sources`) in /etc/apt/sources.list and
/// /etc/apt/sources.list.d/, preferring one that serves the suite itself.
pub fn debian_mirror() -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut sources = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if file.extension().is_some_and(|e| e == "sources") {
            sources.extend(parse_deb822(&text));
        } else {
            sources.extend(parse_one_line(&text));
        }
    }
    sources
        .iter()
        .find(|(_, suites)| suites.iter().any(|s| s == SUITE))
        .or(sources.first())
        .map(|(uri, _)| uri.clone())
        .with_context(|| {
            format!(
                "no `deb` source found in {}: debootstrap needs the Debian mirror apt uses",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// (uri, suites) of each `deb` line of a one-line-style sources.list.
fn parse_one_line(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            let Some(end) = rest.find(']') else { continue };
            rest = &rest[end + 1..];
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), vec![suite.to_string()]));
        }
    }
    out
}

/// (uri, suites) of each `deb` stanza of a deb822 `.sources` file.
fn parse_deb822(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut types, mut uris, mut suites, mut enabled) =
            (Vec::new(), Vec::new(), Vec::new(), true);
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let values = value.split_whitespace().map(str::to_string);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types.extend(values),
                "uris" => uris.extend(values),
                "suites" => suites.extend(values),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if enabled && types.iter().any(|t| t == "deb") {
            out.extend(uris.into_iter().map(|u| (u, suites.clone())));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources() {
        let text = "# comment\ndeb-src http://src bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror/debian bookworm main # x\n";
        assert_eq!(
            parse_one_line(text),
            vec![(
                "http://mirror/debian".to_string(),
                vec!["bookworm".to_string()]
            )]
        );
    }

    #[test]
    fn deb822_sources() {
        let text = "Types: deb\n# http://snapshot\nURIs: http://deb.debian.org/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n\
                    Types: deb-src\nURIs: http://src\nSuites: bookworm\n";
        let parsed = parse_deb822(text);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0, "http://deb.debian.org/debian");
        assert_eq!(parsed[0].1, ["bookworm", "bookworm-updates"]);
        assert_eq!(parsed[1].0, "http://deb.debian.org/debian-security");
    }

    #[test]
    fn recipe_hash_depends_on_contents_and_base() {
        let dir = std::env::temp_dir().join(format!("xtask-hash-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("site")).unwrap();
        std::fs::write(dir.join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(dir.join("site/index.html"), "a").unwrap();
        let h1 = recipe_hash(&dir, "sha256:1").unwrap();
        assert_eq!(h1, recipe_hash(&dir, "sha256:1").unwrap());
        assert_ne!(h1, recipe_hash(&dir, "sha256:2").unwrap());
        std::fs::write(dir.join("site/index.html"), "b").unwrap();
        assert_ne!(h1, recipe_hash(&dir, "sha256:1").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
