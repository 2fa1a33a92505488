//! Where an image comes from: a registry reference, an OCI image layout (a directory or a
//! tarball of one), or a `docker save` archive. Written as `nginx:alpine`,
//! `oci-layout:PATH[:TAG|@DIGEST]` or `docker-archive:PATH`.

use std::fmt;
use std::path::{Path, PathBuf};

use fledge_llb::ImageRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Registry(ImageRef),
    /// An OCI layout directory or tarball; `reference` is a tag or `sha256:` digest.
    OciLayout {
        path: PathBuf,
        reference: Option<String>,
    },
    /// A `docker save` tarball.
    DockerArchive {
        path: PathBuf,
    },
}

impl ImageSource {
    /// Parses a source; relative paths resolve against `base` (the config's directory).
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("oci-layout:") {
            let (path, reference) = split_layout_reference(rest);
            if path.is_empty() {
                return Err(format!("'{text}' names no path: use oci-layout:PATH[:TAG|@DIGEST]"));
            }
            return Ok(Self::OciLayout { path: base.join(path), reference });
        }
        if let Some(path) = text.strip_prefix("docker-archive:") {
            if path.is_empty() {
                return Err(format!("'{text}' names no path: use docker-archive:PATH"));
            }
            return Ok(Self::DockerArchive { path: base.join(path) });
        }
        ImageRef::parse(text).map(Self::Registry).map_err(|e| e.to_string())
    }

    /// A file-name stem for artifacts built from this image.
    pub fn short_name(&self) -> String {
        match self {
            Self::Registry(r) => r.short_name().to_string(),
            Self::OciLayout { path, reference } => match reference {
                Some(tag) if !tag.starts_with("sha256:") => tag.clone(),
                _ => stem(path),
            },
            Self::DockerArchive { path } => stem(path),
        }
    }
}

fn stem(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    name.strip_suffix(".tar").map(str::to_string).unwrap_or(name)
}

/// `PATH:TAG`, `PATH@sha256:...` or `PATH` (a colon inside the path's last component that
/// is followed by a tag-like word is the tag separator).
fn split_layout_reference(rest: &str) -> (&str, Option<String>) {
    if let Some((path, digest)) = rest.rsplit_once('@')
        && digest.starts_with("sha256:")
    {
        return (path, Some(digest.to_string()));
    }
    match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.is_empty() && !tag.contains('/') => (path, Some(tag.to_string())),
        _ => (rest, None),
    }
}

impl fmt::Display for ImageSource {
    /// The name the image is recorded under in the store.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry(r) => write!(f, "{r}"),
            Self::OciLayout { path, reference: Some(r) } if r.starts_with("sha256:") => {
                write!(f, "oci-layout:{}@{r}", path.display())
            }
            Self::OciLayout { path, reference: Some(r) } => write!(f, "oci-layout:{}:{r}", path.display()),
            Self::OciLayout { path, reference: None } => write!(f, "oci-layout:{}", path.display()),
            Self::DockerArchive { path } => write!(f, "docker-archive:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let base = Path::new("/proj");
        assert_eq!(ImageSource::parse("nginx", base).unwrap().to_string(), "docker.io/library/nginx:latest");
        assert_eq!(
            ImageSource::parse("oci-layout:img:v1", base).unwrap(),
            ImageSource::OciLayout { path: "/proj/img".into(), reference: Some("v1".into()) }
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            ImageSource::parse(&format!("oci-layout:/abs/img.tar@{d}"), base).unwrap(),
            ImageSource::OciLayout { path: "/abs/img.tar".into(), reference: Some(d) }
        );
        assert_eq!(ImageSource::parse("oci-layout:dir", base).unwrap().short_name(), "dir");
        assert_eq!(
            ImageSource::parse("docker-archive:x/app.tar", base).unwrap(),
            ImageSource::DockerArchive { path: "/proj/x/app.tar".into() }
        );
        assert!(ImageSource::parse("oci-layout:", base).is_err());
        assert!(ImageSource::parse("Bad:Ref", base).is_err());
    }
}
