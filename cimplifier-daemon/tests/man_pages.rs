//! `cimplifierctl man DIR` writes cimplifierctl(1) and a page per command,
//! from the same definitions as `--help`. Needs no daemon.

mod common;

#[test]
fn man_pages_are_written_for_the_tool_and_each_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::cimplifierctl()
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (page, says) in [
        ("cimplifierctl.1", "verify"),
        ("cimplifierctl-emit.1", "--oci-dir"),
        ("cimplifierctl-verify.1", "--workload"),
        ("cimplifierctl-observe.1", "--lifecycle"),
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is roff:\n{text}"
        );
        // roff escapes dashes: `--oci-dir` is written `\-\-oci\-dir`.
        let escaped = says.replace('-', "\\-");
        assert!(
            text.contains(says) || text.contains(&escaped),
            "{page} names {says}"
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.lines().count() > 10,
        "one page per command: {listed}"
    );
}
