//! Rendering `<stem>.manifest.json`: sorted keys, two-space indent, trailing newline, so the
//! same inputs always give the same bytes.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value, json};

use super::ManifestFormat;
use super::template::ManifestTemplate;
use crate::digest::Sha256Digest;

/// What kind of boot medium the artifact is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootMedia {
    /// `format` names the archive, e.g. `cpio.gz`.
    Initramfs { format: String },
    /// `format` names the filesystem, e.g. `squashfs`.
    Rootfs { format: String },
}

/// The artifact a manifest describes.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Absolute path of the artifact.
    pub path: PathBuf,
    pub media: BootMedia,
    pub checksum: Sha256Digest,
}

impl Artifact {
    fn url(&self) -> String {
        file_url(&self.path)
    }
}

/// A `file://` URL for an absolute path: `.` and `..` resolved lexically, and every byte
/// outside the URL-safe set percent-encoded (`a b` → `a%20b`).
pub fn file_url(path: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(name) => parts.push(name),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut url = String::from("file://");
    for part in parts {
        url.push('/');
        for &b in part.as_encoded_bytes() {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
                url.push(b as char);
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if url.len() == "file://".len() {
        url.push('/');
    }
    url
}

/// The manifest JSON text for `artifact`.
pub fn render(template: &ManifestTemplate, artifact: &Artifact, format: ManifestFormat) -> String {
    let value = match format {
        ManifestFormat::Fledge => fledge_shape(template, artifact),
        ManifestFormat::VolantV1 => volant_v1_shape(template, artifact),
    };
    let mut text = serde_json::to_string_pretty(&value).expect("JSON values always serialize");
    text.push('\n');
    text
}

/// Inserts `value` unless it is an empty object, array or string.
fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Null => true,
        _ => false,
    };
    if !empty {
        map.insert(key.to_string(), value);
    }
}

fn cloud_init_user_data(t: &ManifestTemplate) -> Value {
    t.cloud_init
        .as_ref()
        .and_then(|c| c.user_data.as_ref())
        .map_or(Value::Null, |u| json!({"inline": u.inline, "content": u.content}))
}

/// The keys both shapes share: identity and resources.
fn identity_and_resources(t: &ManifestTemplate) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in
        [("schema_version", &t.schema_version), ("name", &t.name), ("version", &t.version), ("runtime", &t.runtime)]
    {
        m.insert(k.into(), json!(v));
    }
    m.insert("resources".into(), json!({"cpu_cores": t.cpu_cores, "memory_mb": t.memory_mb}));
    m
}

fn devices(t: &ManifestTemplate) -> Value {
    t.devices
        .as_ref()
        .filter(|d| !d.pci_passthrough.is_empty())
        .map_or(Value::Null, |d| json!({"pci_passthrough": d.pci_passthrough}))
}

fn fledge_shape(t: &ManifestTemplate, a: &Artifact) -> Value {
    let mut m = identity_and_resources(t);
    let (key, format) = match &a.media {
        BootMedia::Initramfs { format } => ("initramfs", format),
        BootMedia::Rootfs { format } => ("rootfs", format),
    };
    m.insert(key.into(), json!({"url": a.url(), "format": format, "checksum": a.checksum.to_string()}));
    if let Some(w) = &t.workload {
        let mut wl = Map::new();
        wl.insert("entrypoint".into(), json!(w.entrypoint.clone().unwrap_or_default()));
        put(&mut wl, "args", json!(w.args));
        put(&mut wl, "workdir", json!(w.workdir));
        m.insert("workload".into(), Value::Object(wl));
    }
    put(&mut m, "env", json!(t.env));
    if let Some(n) = &t.network {
        let expose: Vec<Value> = n
            .expose
            .iter()
            .map(|e| {
                let mut x = Map::new();
                x.insert("port".into(), json!(e.port));
                x.insert("protocol".into(), json!(e.protocol));
                if let Some(h) = e.host_port {
                    x.insert("host_port".into(), json!(h));
                }
                Value::Object(x)
            })
            .collect();
        let mut net = Map::new();
        net.insert("mode".into(), json!(n.mode));
        put(&mut net, "expose", Value::Array(expose));
        m.insert("network".into(), Value::Object(net));
    }
    let actions: Map<String, Value> =
        t.actions.iter().map(|(k, a)| (k.clone(), json!({"path": a.path, "method": a.method}))).collect();
    put(&mut m, "actions", Value::Object(actions));
    if let Some(c) = &t.cloud_init {
        let mut ci = Map::new();
        put(&mut ci, "datasource", json!(c.datasource));
        put(&mut ci, "user_data", cloud_init_user_data(t));
        put(&mut ci, "meta_data", json!(c.meta_data));
        put(&mut m, "cloud_init", Value::Object(ci));
    }
    put(&mut m, "devices", devices(t));
    Value::Object(m)
}

fn volant_v1_shape(t: &ManifestTemplate, a: &Artifact) -> Value {
    let mut m = identity_and_resources(t);
    if let Some(w) = &t.workload {
        let entrypoint: Vec<&String> = w.entrypoint.iter().chain(&w.args).collect();
        let mut wl = Map::new();
        wl.insert("type".into(), json!(w.kind));
        wl.insert("base_url".into(), json!(w.base_url));
        wl.insert("entrypoint".into(), json!(entrypoint));
        put(&mut wl, "env", json!(t.env));
        put(&mut wl, "workdir", json!(w.workdir));
        m.insert("workload".into(), Value::Object(wl));
    }
    if let Some(h) = &t.health_check {
        m.insert("health_check".into(), json!({"endpoint": h.endpoint, "timeout_ms": h.timeout_ms}));
    }
    let actions: Map<String, Value> = t
        .actions
        .iter()
        .map(|(k, a)| {
            let mut x = Map::new();
            x.insert("method".into(), json!(a.method));
            x.insert("path".into(), json!(a.path));
            put(&mut x, "description", json!(a.description));
            if let Some(ms) = a.timeout_ms {
                x.insert("timeout_ms".into(), json!(ms));
            }
            (k.clone(), Value::Object(x))
        })
        .collect();
    put(&mut m, "actions", Value::Object(actions));
    let media = match &a.media {
        // plugin-manifest-v1 allows only raw|qcow2 rootfs formats; Volant detects the rest
        // from the URL suffix, so other formats are left out rather than mislabelled.
        BootMedia::Rootfs { format } if format == "raw" || format == "qcow2" => {
            ("rootfs", json!({"url": a.url(), "checksum": a.checksum.to_string(), "format": format}))
        }
        BootMedia::Rootfs { .. } => ("rootfs", json!({"url": a.url(), "checksum": a.checksum.to_string()})),
        BootMedia::Initramfs { .. } => ("initramfs", json!({"url": a.url(), "checksum": a.checksum.to_string()})),
    };
    m.insert(media.0.into(), media.1);
    if let Some(c) = &t.cloud_init {
        let mut ci = Map::new();
        put(&mut ci, "datasource", json!(c.datasource));
        put(&mut ci, "user_data", cloud_init_user_data(t));
        if let Some(meta) = &c.meta_data {
            let content = serde_json::to_string(meta).expect("TOML tables serialize as JSON");
            ci.insert("meta_data".into(), json!({"inline": true, "content": content}));
        }
        put(&mut m, "cloud_init", Value::Object(ci));
    }
    if let Some(n) = &t.network {
        m.insert("network".into(), json!({"mode": n.mode}));
    }
    put(&mut m, "devices", devices(t));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_normalised_and_encoded() {
        assert_eq!(file_url(Path::new("/tmp/h/sub/../out/a b/../x.cpio.gz")), "file:///tmp/h/out/x.cpio.gz");
        assert_eq!(file_url(Path::new("/srv/my app/100%.img")), "file:///srv/my%20app/100%25.img");
        assert_eq!(file_url(Path::new("/")), "file:///");
    }
}
