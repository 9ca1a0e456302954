//! `emit --push REF`: the emitted image to an OCI registry, through the
//! oci-client crate (the OCI distribution API).
//!
//! The layer is pushed gzip-compressed (flate2), as
//! `application/vnd.oci.image.layer.v1.tar+gzip`: the manifest names the
//! compressed blob's digest and size, while the config's `rootfs.diff_ids`
//! keep the uncompressed tar's digest, as the image spec asks. The config
//! blob is the one loaded into Docker, so the pushed image has the same
//! image id. The manifest is pushed as bytes built here, so the digest in
//! the report is the one the registry stores.
//!
//! Credentials come from the caller (cimplifierctl reads its own docker
//! config) or none; the daemon reads no credential file. Plain HTTP is
//! used only for a registry on localhost or 127.0.0.1, or with
//! `--insecure-registry`.

use std::io::Write as _;

use anyhow::Context as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{ImageManifestBuilder, MediaType};
use serde::{Deserialize, Serialize};

use super::EmitError;
use super::oci::{Blob, OciImage, canonical_json};

/// Where to push, and how.
#[derive(Clone, Debug)]
pub struct PushTarget {
    /// REGISTRY/REPOSITORY[:TAG], by the reference grammar.
    pub reference: Reference,
    /// Plain HTTP to a registry that is not on this host.
    pub insecure: bool,
    pub credentials: Credentials,
}

pub use crate::engine::registry::Credentials;

/// What was pushed: where, and the manifest's digest there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// REGISTRY/REPOSITORY:TAG as given.
    pub reference: String,
    /// `sha256:...` of the manifest the registry holds.
    pub manifest_digest: String,
    /// The same image by digest: REGISTRY/REPOSITORY:TAG@DIGEST.
    pub pinned: String,
    /// Size of the gzip-compressed layer.
    pub compressed_bytes: u64,
}

impl PushTarget {
    /// Parses REF (REGISTRY/REPOSITORY[:TAG]; no digest, since the digest
    /// is the pushed manifest's). The error names REF and the grammar.
    pub fn parse(
        reference: &str,
        insecure: bool,
        credentials: Credentials,
    ) -> Result<Self, EmitError> {
        let bad = |why: String| {
            EmitError::Options(format!(
                "push {}: {why}; give REGISTRY/REPOSITORY[:TAG], e.g. 127.0.0.1:5000/web:slim",
                crate::cli::quote_capped(reference, 120)
            ))
        };
        // Docker's grammar first (docker/tag.rs): lower-case repository,
        // tag characters, lengths.
        use crate::docker::tag::TagError;
        reference
            .parse::<crate::docker::tag::ImageTag>()
            .map_err(|e| {
                bad(match e {
                    TagError::Empty => "it is empty".into(),
                    TagError::Digest(_) => {
                        "a digest cannot be pushed to, it is the pushed manifest's".into()
                    }
                    TagError::Uppercase(_) => "repository names are lower case".into(),
                    TagError::Invalid(_, why) => format!("not an image reference ({why})"),
                })
            })?;
        let parsed: Reference = reference.parse().map_err(|e| bad(format!("{e}")))?;
        if parsed.digest().is_some() {
            return Err(bad(
                "a digest cannot be pushed to, it is the manifest's".into()
            ));
        }
        Ok(Self {
            reference: parsed,
            insecure,
            credentials,
        })
    }

    /// Another image on the same terms (a partition's, by its full
    /// reference).
    pub fn renamed(&self, reference: &str) -> Result<Self, EmitError> {
        Self::parse(reference, self.insecure, self.credentials.clone())
    }

    /// The registry's host and port as a client dials it.
    pub fn registry(&self) -> &str {
        self.reference.resolve_registry()
    }

    /// Whether the registry is on this host, where plain HTTP is allowed.
    fn local(&self) -> bool {
        let host = self.reference.registry();
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }

    fn plain_http(&self) -> bool {
        self.local() || self.insecure
    }
}

/// The image's layer gzip-compressed, and the manifest that names it.
pub fn compressed(image: &OciImage) -> anyhow::Result<(Blob, Blob)> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(image.layer.bytes.len() / 2),
        flate2::Compression::default(),
    );
    gz.write_all(&image.layer.bytes)
        .context("compressing the layer")?;
    let layer = Blob::new(gz.finish().context("compressing the layer")?);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(image.config.descriptor(MediaType::ImageConfig)?)
        .layers(vec![layer.descriptor(MediaType::ImageLayerGzip)?])
        .build()?;
    Ok((layer, Blob::new(canonical_json(&manifest)?)))
}

/// What went wrong, said for the registry with what to do.
fn explain(e: OciDistributionError, target: &PushTarget) -> EmitError {
    let registry = target.registry();
    let scheme = if target.plain_http() { "http" } else { "https" };
    // A registry's answer in short: its status and the first error of the
    // distribution spec's error envelope, not the whole JSON.
    let text = match &e {
        OciDistributionError::ServerError { code, message, .. } => {
            let first = serde_json::from_str::<serde_json::Value>(message)
                .ok()
                .and_then(|v| {
                    let err = v.get("errors")?.get(0)?;
                    Some(format!(
                        "{} {}",
                        err.get("code")?.as_str()?,
                        err.get("message")?.as_str()?
                    ))
                })
                .unwrap_or_else(|| crate::cli::quote_capped(message.trim(), 200));
            format!("HTTP {code}: {first}")
        }
        _ => format!("{e:#}"),
    };
    let chain = {
        let mut all = text.clone();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            all.push_str(": ");
            all.push_str(&s.to_string());
            source = s.source();
        }
        all
    };
    let message = match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => format!(
            "registry {registry} refused the credentials for pushing {} ({text}); run `docker \
             login {registry}` as the user who runs cimplifierctl, or check that this user may \
             push to that repository",
            target.reference
        ),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        }
        | OciDistributionError::RegistryError { .. }
            if text.contains("401")
                || text.contains("403")
                || text.contains("UNAUTHORIZED")
                || text.contains("DENIED") =>
        {
            format!(
                "registry {registry} refused the push of {} ({text}); run `docker login {registry}` \
             as the user who runs cimplifierctl, or check that this user may push to that \
             repository",
                target.reference
            )
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            if !target.plain_http()
                && (chain.contains("InvalidContentType")
                    || chain.contains("corrupt message")
                    || chain.contains("record")
                    || chain.contains("certificate"))
            {
                format!(
                    "registry {registry} does not answer HTTPS ({chain}); it is not on this \
                     host, so plain HTTP is used only with --insecure-registry (for a \
                     registry you trust on a network you trust), or give it a TLS certificate"
                )
            } else {
                format!(
                    "cannot reach registry {registry} at {scheme}://{registry} ({chain}); is it \
                     running, and is REGISTRY[:PORT] in the push reference right?"
                )
            }
        }
        _ => format!(
            "pushing {} to registry {registry} failed: {chain}",
            target.reference
        ),
    };
    EmitError::Registry(message)
}

/// Pushes `image` to `target`: the compressed layer, the config, then the
/// manifest under the tag.
pub async fn push(image: &OciImage, target: &PushTarget) -> Result<Pushed, EmitError> {
    // reqwest is built without a crypto provider of its own: rustls takes
    // the process's, ring, as tonic's TLS does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(ClientConfig {
        protocol: if target.plain_http() {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        // A registry that stops answering must not hold an emit (and its
        // heavy-call permit) for ever.
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        user_agent: concat!("cimplifier/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    });
    let auth = match &target.credentials {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
    };
    let (layer, manifest) = compressed(image).map_err(EmitError::Failed)?;
    let reference = &target.reference;
    client
        .auth(reference, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| explain(e, target))?;
    for blob in [&layer, &image.config] {
        client
            .push_blob(reference, blob.bytes.clone(), &blob.digest())
            .await
            .map_err(|e| explain(e, target))?;
    }
    client
        .push_manifest_raw(
            reference,
            manifest.bytes.clone(),
            MediaType::ImageManifest
                .to_string()
                .parse()
                .expect("a media type is a header value"),
        )
        .await
        .map_err(|e| explain(e, target))?;
    let whole = reference.whole();
    Ok(Pushed {
        pinned: format!("{whole}@{}", manifest.digest()),
        reference: whole,
        manifest_digest: manifest.digest(),
        compressed_bytes: layer.bytes.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::oci::{SourceConfig, build};
    use std::io::Read as _;

    #[test]
    fn the_layer_is_gzip_with_its_digest_in_the_manifest_and_the_diff_id_uncompressed() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        tar.append_data(&mut h, "hello", &b"world"[..]).unwrap();
        let image = build(
            tar.into_inner().unwrap(),
            &SourceConfig::default(),
            &Default::default(),
            None,
        )
        .unwrap();
        let (layer, manifest) = compressed(&image).unwrap();
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&layer.bytes[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, image.layer.bytes);

        let m: oci_spec::image::ImageManifest = serde_json::from_slice(&manifest.bytes).unwrap();
        assert_eq!(m.layers()[0].media_type(), &MediaType::ImageLayerGzip);
        assert_eq!(m.layers()[0].digest().to_string(), layer.digest());
        assert_eq!(m.layers()[0].size(), layer.bytes.len() as u64);
        assert_eq!(m.config().digest().to_string(), image.config.digest());
        let config: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(
            config.rootfs().diff_ids(),
            &[image.layer.digest()],
            "the diff_id is the uncompressed tar's"
        );
        // The same image compresses to the same bytes: a second push is a no-op.
        assert_eq!(compressed(&image).unwrap().1.digest(), manifest.digest());
    }

    #[test]
    fn references_are_checked_and_plain_http_is_for_this_host() {
        let t = |r: &str, insecure| PushTarget::parse(r, insecure, Credentials::Anonymous);
        assert!(t("127.0.0.1:5000/web:slim", false).unwrap().plain_http());
        assert!(t("localhost:5000/web", false).unwrap().plain_http());
        assert!(!t("registry.example:5000/web", false).unwrap().plain_http());
        assert!(t("registry.example:5000/web", true).unwrap().plain_http());
        let p = t("127.0.0.1:5000/org/web", false).unwrap();
        assert_eq!(p.reference.whole(), "127.0.0.1:5000/org/web:latest");
        let part = p.renamed("127.0.0.1:5000/org/web-db:v2").unwrap();
        assert_eq!(part.reference.whole(), "127.0.0.1:5000/org/web-db:v2");
        for bad in [
            "Web:slim",
            "127.0.0.1:5000/web@sha256:abc",
            "web:bad tag",
            "",
        ] {
            let e = t(bad, false).unwrap_err().to_string();
            assert!(e.contains("REGISTRY/REPOSITORY[:TAG]"), "{bad}: {e}");
        }
    }
}
