//! The image reader takes every format an engine or tool writes and gives
//! the same tree from each: `docker image save` (docker-archive), and OCI
//! archives written by skopeo with gzip and with zstd layers. The tree is
//! compared byte for byte (what every emit copies from), so the slim output
//! is the same whichever format the image came in. Real images, real
//! skopeo (`cargo xtask setup` installs it). Needs root and dockerd.

mod common;

use std::process::Command;

use cimplifier::image::fs::ImageFs;
use common::{BASE_IMAGE, require_root};

fn docker_save(image: &str) -> std::fs::File {
    let file = tempfile::tempfile().unwrap();
    let status = Command::new("docker")
        .args(["image", "save", image])
        .stdout(file.try_clone().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "docker image save {image}");
    file
}

fn skopeo_oci_archive(image: &str, format: &str) -> std::fs::File {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("image.tar");
    let run = Command::new("skopeo")
        .args(["copy", "--dest-compress", "--dest-compress-format", format])
        .arg(format!("docker-daemon:{image}"))
        .arg(format!("oci-archive:{}", out.display()))
        .output()
        .expect("running skopeo (installed by `cargo xtask setup`)");
    assert!(
        run.status.success(),
        "skopeo copy to oci-archive ({format}): {}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Read and written in place: a copy the reader may append to.
    let file = tempfile::tempfile().unwrap();
    std::io::copy(
        &mut std::fs::File::open(&out).unwrap(),
        &mut file.try_clone().unwrap(),
    )
    .unwrap();
    file
}

fn layer_media_types(archive: &std::fs::File) -> Vec<String> {
    use std::io::{Read, Seek};
    let mut archive = archive.try_clone().unwrap();
    archive.rewind().unwrap();
    let mut types = Vec::new();
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().size().unwrap() > 1 << 20 {
            continue;
        }
        let mut text = String::new();
        if entry.read_to_string(&mut text).is_ok()
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(layers) = v["layers"].as_array()
        {
            types.extend(
                layers
                    .iter()
                    .filter_map(|l| l["mediaType"].as_str().map(str::to_owned)),
            );
        }
    }
    types
}

#[test]
fn docker_save_and_oci_archives_with_gzip_and_zstd_layers_give_the_same_tree() {
    require_root();
    let image = BASE_IMAGE;
    let reference = ImageFs::from_archive_file(docker_save(image), "docker-archive").unwrap();
    let reference_tar = reference.write_tar(&|_| true).unwrap();
    let entries = reference.entries().count();
    assert!(entries > 1000, "{entries} entries in {image}");
    for format in ["gzip", "zstd"] {
        let archive = skopeo_oci_archive(image, format);
        let types = layer_media_types(&archive);
        assert!(
            !types.is_empty() && types.iter().all(|t| t.ends_with(&format!("+{format}"))),
            "skopeo wrote {format} layers: {types:?}"
        );
        let fs = ImageFs::from_archive_file(archive, &format!("oci-archive ({format})")).unwrap();
        assert_eq!(fs.entries().count(), entries, "{format}");
        assert!(
            fs.write_tar(&|_| true).unwrap() == reference_tar,
            "the tree read from the {format} OCI archive differs from docker save's"
        );
    }
}
