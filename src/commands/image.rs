//! `fledge image pull|ls|inspect|rm`.

use anyhow::{Context, Result, bail};
use fledge_llb::ImageRef;
use serde_json::json;

use crate::cli::ImageCommand;
use crate::dirs;
use crate::image::export::export;
use crate::image::import::import;
use crate::image::pull::pull;
use crate::image::source::ImageSource;
use crate::image::spec::Platform;
use crate::image::stored::StoredImage;
use crate::output::Pending;
use crate::progress::Progress;
use crate::store::{ImageRecord, Store};

pub fn run(command: &ImageCommand, progress: &Progress) -> Result<()> {
    let store = Store::open(dirs::state_dir().as_deref())?;
    match command {
        ImageCommand::Pull { reference, platform } => {
            if !matches!(source(reference)?, ImageSource::Registry(_)) {
                bail!(
                    "{reference} names a file, not a registry image\n  = help: use `fledge image import {reference}`"
                );
            }
            let image = ImageRef::parse(reference)?;
            let record = pull(&image, &platform_or_host(platform.as_deref())?, &store, progress)?;
            progress.say(&format!("Pulled {} ({})", record.name, record.digest));
            println!("{}", record.digest);
        }
        ImageCommand::Import { source, platform } => {
            let source = self::source(source)?;
            if let ImageSource::Registry(r) = &source {
                bail!(
                    "{r} is a registry reference\n  = help: use `fledge image pull {r}`, or name a file as oci-layout:PATH or docker-archive:PATH"
                );
            }
            let record = import(&source, &store, &platform_or_host(platform.as_deref())?, progress)?;
            progress.say(&format!("Imported {} ({})", record.name, record.digest));
            println!("{}", record.digest);
        }
        ImageCommand::Ls => {
            let images = store.images()?;
            println!("{:<60} {:<19} {:<16} {:>10}", "NAME", "DIGEST", "PLATFORM", "SIZE");
            for record in images {
                let size = StoredImage::load(&store, record.clone())
                    .map(|i| i.manifest.layers.iter().map(|l| l.size).sum::<u64>())
                    .unwrap_or(0);
                let short =
                    record.digest.strip_prefix("sha256:").map_or(record.digest.as_str(), |h| &h[..12.min(h.len())]);
                println!(
                    "{:<60} {:<19} {:<16} {:>10}",
                    record.name,
                    short,
                    record.platform,
                    indicatif::HumanBytes(size).to_string()
                );
            }
        }
        ImageCommand::Inspect { reference } => {
            let record = find(&store, reference)?;
            let StoredImage { record, manifest, config } = StoredImage::load(&store, record)?;
            let out = json!({
                "name": record.name,
                "digest": record.digest,
                "platform": record.platform,
                "source": record.source,
                "config": {
                    "Entrypoint": config.config.entrypoint,
                    "Cmd": config.config.cmd,
                    "Env": config.config.env,
                    "WorkingDir": config.config.working_dir,
                    "User": config.config.user,
                },
                "layers": manifest.layers.iter().map(|l| json!({"digest": l.digest, "size": l.size, "mediaType": l.media_type})).collect::<Vec<_>>(),
                "size": manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Export { reference, output } => {
            let image = StoredImage::load(&store, find(&store, reference)?)?;
            let mut pending = Pending::new(output)?;
            export(&store, &image, std::io::BufWriter::new(pending.file()))
                .with_context(|| format!("cannot write {}", output.display()))?;
            pending.commit()?;
            progress.say(&format!("Exported {} to {}", image.record.name, output.display()));
        }
        ImageCommand::Rm { references } => {
            for reference in references {
                let name = store_name(reference)?;
                if !store.untag(&name)? {
                    bail!("{name} is not in the store (see `fledge image ls`)");
                }
                progress.say(&format!("Untagged {name}"));
            }
        }
    }
    Ok(())
}

fn platform_or_host(platform: Option<&str>) -> Result<Platform> {
    platform.map_or_else(|| Ok(Platform::host()), |p| Platform::parse(p).map_err(anyhow::Error::msg))
}

fn find(store: &Store, reference: &str) -> Result<ImageRecord> {
    let source = source(reference)?;
    let get = match source {
        ImageSource::Registry(_) => "pull",
        _ => "import",
    };
    let name = source.to_string();
    store.lookup(&name)?.with_context(|| {
        format!("{name} is not in the store\n  = help: {get} it with `fledge image {get} {reference}`")
    })
}

/// What `reference` names: a registry image, or an `oci-layout:`/`docker-archive:` file.
fn source(reference: &str) -> Result<ImageSource> {
    ImageSource::parse(reference, &std::env::current_dir()?).map_err(anyhow::Error::msg)
}

/// The name an image is recorded under: the normalised reference, or `oci-layout:`/
/// `docker-archive:` with an absolute path.
fn store_name(reference: &str) -> Result<String> {
    Ok(source(reference)?.to_string())
}

/// `fledge prune`.
pub fn prune(progress: &Progress) -> Result<()> {
    let store = Store::open_exclusive(dirs::state_dir().as_deref())?;
    let pruned = store.prune()?;
    progress.say(&format!("Removed {} unused blob(s), {}", pruned.blobs, indicatif::HumanBytes(pruned.bytes)));
    Ok(())
}
