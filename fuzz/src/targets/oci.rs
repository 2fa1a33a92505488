//! OCI documents as a pull decodes them: a manifest or index by media type or shape, and an
//! image configuration.

use fledge::image::spec::{ImageConfig, Platform, parse_document};

use crate::{Rng, Target, mutate};

const MEDIA_TYPES: &[&str] = &[
    "",
    "application/json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

pub struct Oci;

impl Target for Oci {
    fn name(&self) -> &'static str {
        "oci"
    }

    fn run(&mut self, input: &[u8]) {
        for media_type in MEDIA_TYPES {
            let _ = parse_document(input, media_type);
        }
        if let Ok(config) = serde_json::from_slice::<ImageConfig>(input) {
            let _ = serde_json::to_vec(&config);
        }
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = Platform::parse(text);
        }
    }

    fn mutate(&self, base: &[u8], _: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
        if rng.one_in(3) { mutate::bytes(base, rng) } else { mutate::json(base, rng) }
    }
}
