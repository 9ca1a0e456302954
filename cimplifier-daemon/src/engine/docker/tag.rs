//! The name an emitted image is loaded into Docker under (`--tag`),
//! checked against Docker's reference grammar before any work is done, by
//! cimplifierctl and again by the daemon at request entry.

use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::{ParseError, Reference};

/// A Docker image tag, `[REGISTRY[:PORT]/]REPOSITORY[:TAG]`, as given (so
/// `docker images` shows it as the user wrote it). Digests are refused: an
/// image is loaded under a name, a digest names content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageTag {
    text: String,
    /// Where the repository ends in `text` (the `:TAG` follows, if any).
    repository_end: usize,
}

/// Why a tag was refused. Each message quotes the input, cut short.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TagError {
    #[error("--tag is empty: give REPOSITORY[:TAG], e.g. myapp:slim")]
    Empty,
    #[error(
        "--tag {0}: a tag names an image, it cannot carry a digest (@sha256:...); give REPOSITORY[:TAG], e.g. myapp:slim"
    )]
    Digest(String),
    #[error(
        "--tag {0}: Docker repository names are lower case; give REPOSITORY[:TAG], e.g. myapp:slim"
    )]
    Uppercase(String),
    #[error(
        "--tag {0}: not a Docker image reference ({1}); give REPOSITORY[:TAG] with a lower-case repository of \
         letters, digits and . _ - separated by /, and a tag of at most 128 letters, digits, . _ -; e.g. myapp:slim"
    )]
    Invalid(String, String),
}

/// At most this much of an input is quoted back in an error.
const QUOTED: usize = 80;

impl ImageTag {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The repository, with its registry if given: `localhost:5000/myapp`.
    pub fn repository(&self) -> &str {
        &self.text[..self.repository_end]
    }

    /// The tag after the repository; `latest` when none was given.
    pub fn tag(&self) -> &str {
        self.text
            .get(self.repository_end + 1..)
            .filter(|t| !t.is_empty())
            .unwrap_or("latest")
    }
}

impl FromStr for ImageTag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, TagError> {
        if s.is_empty() {
            return Err(TagError::Empty);
        }
        let quoted = crate::cli::quote_capped(s, QUOTED);
        // The reference grammar is a regex over the whole input: bound it
        // first (a name is at most 255 characters, a tag 128, a registry
        // host 255).
        if s.len() > 700 {
            return Err(TagError::Invalid(quoted, "longer than 700 bytes".into()));
        }
        if s.contains('@') {
            return Err(TagError::Digest(quoted));
        }
        // The tag starts at the last ':' that no '/' follows (a ':' before
        // a '/' is a registry's port).
        let repository_end = match s.rfind(':') {
            Some(i) if !s[i..].contains('/') => i,
            _ => s.len(),
        };
        if s[..repository_end]
            .split_once('/')
            .map_or(s, |(host, path)| {
                // A registry host may have capitals (DNS is case-blind); the path may not.
                if host.contains(['.', ':']) || host == "localhost" {
                    path
                } else {
                    &s[..repository_end]
                }
            })
            .chars()
            .any(|c| c.is_ascii_uppercase())
        {
            return Err(TagError::Uppercase(quoted));
        }
        match Reference::from_str(s) {
            Ok(_) => Ok(Self {
                text: s.to_owned(),
                repository_end,
            }),
            Err(ParseError::NameTooLong) => Err(TagError::Invalid(
                quoted,
                "the repository is longer than 255 characters".into(),
            )),
            Err(e) => Err(TagError::Invalid(quoted, e.to_string())),
        }
    }
}

impl fmt::Display for ImageTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ImageTag {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should be a tag: {e}"))
    }

    #[test]
    fn accepts_what_docker_tag_accepts() {
        let t = ok("myapp:slim");
        assert_eq!((t.repository(), t.tag()), ("myapp", "slim"));
        let t = ok("myorg/web");
        assert_eq!((t.repository(), t.tag()), ("myorg/web", "latest"));
        let t = ok("localhost:5000/team/app:v1.2_3-rc");
        assert_eq!(
            (t.repository(), t.tag()),
            ("localhost:5000/team/app", "v1.2_3-rc")
        );
        let t = ok("Registry.Example:443/a__b/c-d.e:1");
        assert_eq!(t.tag(), "1");
        assert_eq!(ok("cimplifier-test/x:Upper_Tag").tag(), "Upper_Tag");
    }

    #[test]
    fn refuses_what_docker_refuses_and_says_why() {
        for bad in [
            "MyApp:slim",
            "myorg/Web",
            "my app",
            "myapp:",
            "myapp:-x",
            ":slim",
            "/myapp",
            "myapp//x",
            "myapp:slim:again",
            "myapp:a/b",
            "-myapp",
            "myapp.",
        ] {
            let e = bad
                .parse::<ImageTag>()
                .expect_err(&format!("{bad:?} is not a tag"));
            assert!(e.to_string().contains("REPOSITORY[:TAG]"), "{e}");
        }
        assert!(matches!(
            "MyApp:slim".parse::<ImageTag>(),
            Err(TagError::Uppercase(_))
        ));
        assert_eq!("".parse::<ImageTag>(), Err(TagError::Empty));
        let digest = format!("myapp@sha256:{}", "a".repeat(64));
        assert!(matches!(
            digest.parse::<ImageTag>(),
            Err(TagError::Digest(_))
        ));
        let long_tag = format!("myapp:{}", "t".repeat(129));
        assert!(long_tag.parse::<ImageTag>().is_err());
    }

    #[test]
    fn an_error_never_quotes_a_huge_input_whole() {
        let huge = "A".repeat(10 << 20);
        let e = huge.parse::<ImageTag>().unwrap_err().to_string();
        assert!(e.len() < 600, "{} bytes", e.len());
        let e = format!("x{}", "y".repeat(300))
            .parse::<ImageTag>()
            .unwrap_err()
            .to_string();
        assert!(e.len() < 600 && e.contains("bytes"), "{e}");
    }
}
