//! Sources besides the context: images (from a registry or a local OCI layout, through the
//! store) and a file fetched over HTTP(S).

use anyhow::{Context as _, Result, bail};
use fledge_llb::pb;

use crate::digest::Sha256Digest;
use crate::fetch::{Fetcher, Policy};
use crate::image::source::ImageSource;
use crate::image::spec::Platform;
use crate::image::stored::StoredImage;
use crate::paths::ImagePath;
use crate::progress::Progress;
use crate::rootfs::{Attrs, FileData, Node, Tree};
use crate::store::Store;

/// `http(s)://URL`: a filesystem holding the downloaded file, as BuildKit makes it
/// (`http.filename`, else the URL's last path segment, else `index`; mode `http.perm`, 0600
/// by default; owner `http.uid`/`http.gid`). With `http.checksum` the download is verified
/// and served from the download cache afterwards, so it works offline; without one it is
/// fetched each build (falling back to the cache offline). Returns the one layer.
pub fn http(store: &Store, source: &pb::SourceOp) -> Result<Sha256Digest> {
    let url = &source.identifier;
    let attr = |name: &str| source.attrs.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let expected = attr("http.checksum")
        .map(|c| {
            c.parse::<Sha256Digest>()
                .map_err(|e| anyhow::anyhow!("{url}: checksum {c}: {e} (only sha256 is supported)"))
        })
        .transpose()?;
    let policy = if expected.is_some() { Policy::CacheFirst } else { Policy::NetworkFirst };
    let (path, _) = Fetcher::new(crate::dirs::cache_dir())
        .fetch(url, expected, policy)
        .with_context(|| format!("cannot fetch {url}"))?;
    let filename = match attr("http.filename") {
        Some(name) => name.to_string(),
        None => url
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|s| !s.is_empty() && !s.contains(':'))
            .unwrap_or("index")
            .to_string(),
    };
    if filename.contains('/') || filename == "." || filename == ".." {
        bail!("{url}: {filename:?} cannot be a file name");
    }
    let mode = match attr("http.perm") {
        Some(perm) => u32::from_str_radix(perm.trim_start_matches("0o"), 8)
            .with_context(|| format!("{url}: http.perm {perm} is not an octal mode"))?,
        None => 0o600,
    };
    let id = |name: &str| -> Result<u32> {
        attr(name).map_or(Ok(0), |v| v.parse().with_context(|| format!("{url}: {name} {v} is not a number")))
    };
    let mut tree = Tree::default();
    let file = ImagePath::root().join(&filename);
    tree.insert(&file, Node::File { mode: mode & 0o7777, data: FileData::Host(path) })?;
    tree.set_attrs(&file, Attrs { uid: id("http.uid")?, gid: id("http.gid")?, xattrs: Vec::new() });
    let tmp = tempfile::Builder::new().prefix("http-").tempfile_in(store.tmp_dir()?)?;
    let writer = std::io::BufWriter::new(tmp.reopen()?);
    crate::rootfs::tar::write_tree(&tree, &crate::rootfs::walk::NoLayers, writer, 0, &mut |_| {})?;
    let (digest, _) = store.write_blob(&mut tmp.reopen()?, None, "a downloaded file's layer")?;
    Ok(digest)
}

/// An image's layers: from the store, pulled from its registry or imported from a local
/// layout (verified) when the store lacks it.
pub fn image(
    store: &Store,
    source: &ImageSource,
    platform: &Platform,
    progress: &Progress,
) -> Result<Vec<Sha256Digest>> {
    let image = StoredImage::resolve(store, source, platform, progress)?;
    image.manifest.layers.iter().map(|l| l.digest.parse().map_err(anyhow::Error::msg)).collect()
}
