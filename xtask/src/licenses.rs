//! `cargo xtask licenses`: every crate the project builds (both
//! workspaces: the daemon's and the kernel programs') must be usable in an
//! MIT OR Apache-2.0 project. Each package's SPDX expression is evaluated
//! against the allow-list with the `spdx` crate; a package with no licence
//! expression, or one the list does not satisfy, fails the check by name.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use spdx::{Expression, LicenseItem, ParseMode};

use crate::util::{self, Step};

/// Licences compatible with distributing cimplifier under MIT OR
/// Apache-2.0: permissive, no copyleft.
pub const ALLOWED: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unicode-3.0",
    "Unlicense",
    "BSL-1.0",
    "CC0-1.0",
    // A permissive licence for data, no copyleft: Mozilla's CA certificates
    // in webpki-root-certs, which the registry client (emit --push) trusts.
    "CDLA-Permissive-2.0",
];

pub fn run() -> Result<()> {
    let _step = Step::new("licenses");
    let root = util::repo_root();
    let mut refused = BTreeMap::new();
    let mut checked = 0;
    for workspace in [root.clone(), root.join("cimplifier-ebpf")] {
        for (package, license) in packages(&workspace)? {
            checked += 1;
            if let Err(why) = check(&license) {
                refused.insert(package, why);
            }
        }
    }
    if !refused.is_empty() {
        let list: Vec<String> = refused
            .iter()
            .map(|(p, why)| format!("  {p}: {why}"))
            .collect();
        bail!(
            "{} of {checked} packages have a licence outside the allow-list ({}):\n{}\n\
             replace them, or widen xtask/src/licenses.rs ALLOWED with a reason",
            refused.len(),
            ALLOWED.join(", "),
            list.join("\n")
        );
    }
    println!(
        "licences: all {checked} packages allowed ({})",
        ALLOWED.join(", ")
    );
    Ok(())
}

/// Whether `expression` can be satisfied with the allowed licences.
pub fn check(expression: &str) -> std::result::Result<(), String> {
    let parsed = Expression::parse_mode(expression, ParseMode::LAX)
        .map_err(|e| format!("licence expression {expression:?} does not parse: {e}"))?;
    let allowed = parsed.evaluate(|req| match &req.license {
        LicenseItem::Spdx { id, .. } => ALLOWED.contains(&id.name),
        LicenseItem::Other { .. } => false,
    });
    if allowed {
        Ok(())
    } else {
        Err(format!("{expression} is not satisfied by the allow-list"))
    }
}

/// `name version` and licence expression of every package of a workspace's
/// dependency graph, from `cargo metadata` with its lock file.
fn packages(workspace: &Path) -> Result<Vec<(String, String)>> {
    let out = Command::new(util::cargo())
        .current_dir(workspace)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .with_context(|| format!("running cargo metadata in {}", workspace.display()))?;
    if !out.status.success() {
        bail!(
            "cargo metadata in {} failed: {}",
            workspace.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading cargo metadata of {}", workspace.display()))?;
    let mut list = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let name = format!(
            "{} {}",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?")
        );
        // Workspace members carry the workspace's own licence.
        let license = p["license"].as_str().unwrap_or_default().to_owned();
        list.push((name, license));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn permissive_expressions_pass_and_copyleft_ones_do_not() {
        for ok in [
            "MIT OR Apache-2.0",
            "MIT/Apache-2.0",
            "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
            "(MIT OR Apache-2.0) AND Unicode-3.0",
            "MIT OR Apache-2.0 OR LGPL-2.1-or-later",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for refused in [
            "LGPL-2.1-or-later",
            "GPL-2.0-only AND MIT",
            "",
            "MIT AND NOPE",
        ] {
            assert!(check(refused).is_err(), "{refused}");
        }
    }
}
