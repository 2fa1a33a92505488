//! A client for the OCI distribution API: pulling manifests and blobs, and pushing them
//! (monolithic blob uploads, manifests by tag), with token or basic authentication negotiated from `WWW-Authenticate` challenges, credentials from
//! Docker's config, and plain HTTP only for loopback registries and those listed in
//! `FLEDGE_INSECURE_REGISTRIES` (comma-separated `host[:port]`).

use std::io::Read;
use std::time::Duration;

use fledge_llb::ImageRef;
use ureq::Body;
use ureq::http::Response;

use super::auth::{self, Credentials, parse_challenge};
use super::spec::MANIFEST_ACCEPT;
use crate::digest::Sha256Digest;

/// Manifests and indexes larger than this are refused (the distribution spec suggests 4 MiB).
const MANIFEST_LIMIT: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference}: not found in the registry ({url} answered 404)")]
    NotFound { reference: String, url: String },
    #[error(
        "{registry} refused access to {repository} ({status})\n  = help: log in with `docker login {registry}` (credentials are read from ~/.docker/config.json \"auths\"; pushing a cache needs push rights), or check the repository name"
    )]
    Unauthorized { registry: String, repository: String, status: u16 },
    #[error("{url} answered HTTP {status}: {body}")]
    Http { url: String, status: u16, body: String },
    #[error("cannot reach {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("{0}")]
    Config(String),
}

/// The registry host to contact for `registry` (Docker Hub's API lives elsewhere).
fn api_host(registry: &str) -> &str {
    if registry == "docker.io" { "registry-1.docker.io" } else { registry }
}

fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name == "localhost" || name.starts_with("127.") || name == "::1"
}

fn insecure_registries() -> Vec<String> {
    std::env::var("FLEDGE_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `http` for loopback and explicitly insecure registries, `https` otherwise.
pub fn scheme_for(registry: &str) -> &'static str {
    if is_loopback(registry) || insecure_registries().iter().any(|r| r == registry) { "http" } else { "https" }
}

/// One repository on one registry, with the authorization it has negotiated so far.
pub struct Session {
    agent: ureq::Agent,
    registry: String,
    repository: String,
    base: String,
    credentials: Option<Credentials>,
    authorization: Option<String>,
}

impl Session {
    pub fn new(image: &ImageRef) -> Result<Self, RegistryError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .proxy(ureq::Proxy::try_from_env())
            .build()
            .into();
        let credentials = auth::lookup(&image.registry).map_err(RegistryError::Config)?;
        let base = format!("{}://{}", scheme_for(&image.registry), api_host(&image.registry));
        Ok(Self {
            agent,
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            base,
            credentials,
            authorization: None,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// Sends a request (`send` builds it with the authorization so far), negotiating
    /// authorization when the registry answers 401: once for a session's first request, and
    /// again when a push needs a token of a wider scope than the pulls before it.
    fn authorized(
        &mut self,
        url: &str,
        send: impl Fn(&ureq::Agent, Option<&str>) -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, RegistryError> {
        let network = |e: ureq::Error| RegistryError::Network { url: url.to_string(), reason: e.to_string() };
        let response = send(&self.agent, self.authorization.as_deref()).map_err(network)?;
        if response.status().as_u16() != 401 {
            return Ok(response);
        }
        let challenge =
            response.headers().get("www-authenticate").and_then(|h| h.to_str().ok()).and_then(parse_challenge);
        let authorization = match challenge {
            Some(c) if c.scheme == "bearer" => Some(self.fetch_token(&c.params)?),
            Some(c) if c.scheme == "basic" => self.credentials.as_ref().map(Credentials::basic_header),
            _ => None,
        };
        if authorization.is_none() || authorization == self.authorization {
            return Err(RegistryError::Unauthorized {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                status: 401,
            });
        }
        self.authorization = authorization;
        send(&self.agent, self.authorization.as_deref()).map_err(network)
    }

    /// GET with authentication when the registry asks for it.
    fn get(&mut self, path: &str, accept: Option<&str>) -> Result<Response<Body>, RegistryError> {
        let url = self.url(path);
        self.authorized(&url, |agent, authorization| {
            let mut request = with_authorization(agent.get(&url), authorization);
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            request.call()
        })
    }

    fn fetch_token(&self, params: &std::collections::BTreeMap<String, String>) -> Result<String, RegistryError> {
        let realm = params.get("realm").ok_or_else(|| {
            RegistryError::Config(format!("{} sent a Bearer challenge without a realm", self.registry))
        })?;
        let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut request = self.agent.get(realm).query("scope", &scope);
        if let Some(service) = params.get("service") {
            request = request.query("service", service);
        }
        if let Some(c) = &self.credentials {
            request = request.header("Authorization", c.basic_header());
        }
        let mut response =
            request.call().map_err(|e| RegistryError::Network { url: realm.clone(), reason: e.to_string() })?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(RegistryError::Unauthorized {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                status,
            });
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| RegistryError::Network { url: realm.clone(), reason: e.to_string() })?;
        if status != 200 {
            return Err(RegistryError::Http {
                url: realm.clone(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Config(format!("token from {realm} is not valid JSON: {e}")))?;
        let token = token
            .token
            .or(token.access_token)
            .ok_or_else(|| RegistryError::Config(format!("{realm} returned no token")))?;
        Ok(format!("Bearer {token}"))
    }

    fn check(&self, response: &mut Response<Body>, what: &str) -> Result<(), RegistryError> {
        let status = response.status().as_u16();
        let url = self.url(what);
        match status {
            200..=299 => Ok(()),
            404 => {
                Err(RegistryError::NotFound { reference: format!("{}/{}@{what}", self.registry, self.repository), url })
            }
            401 | 403 => Err(RegistryError::Unauthorized {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                status,
            }),
            _ => {
                let body = response.body_mut().with_config().limit(64 << 10).read_to_vec().unwrap_or_default();
                Err(RegistryError::Http {
                    url,
                    status,
                    body: String::from_utf8_lossy(&body).chars().take(200).collect(),
                })
            }
        }
    }

    /// A manifest or index by tag or digest: its bytes and Content-Type.
    pub fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let path = format!("manifests/{reference}");
        let mut response = self.get(&path, Some(MANIFEST_ACCEPT))?;
        self.check(&mut response, &path)?;
        let media_type = response
            .headers()
            .get("content-type")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MANIFEST_LIMIT)
            .read_to_vec()
            .map_err(|e| RegistryError::Network { url: self.url(&path), reason: e.to_string() })?;
        Ok((bytes, media_type))
    }

    /// A blob's content as a stream (the caller verifies it while storing).
    pub fn blob(&mut self, digest: &Sha256Digest) -> Result<impl Read + use<>, RegistryError> {
        let path = format!("blobs/{digest}");
        let mut response = self.get(&path, None)?;
        self.check(&mut response, &path)?;
        Ok(response.into_body().into_with_config().limit(u64::MAX).reader())
    }

    /// Whether the repository already holds blob `digest` (a push skips it).
    pub fn has_blob(&mut self, digest: &Sha256Digest) -> Result<bool, RegistryError> {
        let path = format!("blobs/{digest}");
        let url = self.url(&path);
        let mut response =
            self.authorized(&url, |agent, authorization| with_authorization(agent.head(&url), authorization).call())?;
        if response.status().as_u16() == 404 {
            return Ok(false);
        }
        self.check(&mut response, &path)?;
        Ok(true)
    }

    /// Uploads blob `digest` of `size` bytes, streamed from `content`, in one request: a POST
    /// opens the upload (and settles authorization, which a body could not be sent twice
    /// for), a PUT of the content to its location closes it. The registry verifies the digest.
    pub fn push_blob(&mut self, digest: &Sha256Digest, size: u64, content: &mut dyn Read) -> Result<(), RegistryError> {
        let path = "blobs/uploads/";
        let url = self.url(path);
        let mut response = self.authorized(&url, |agent, authorization| {
            with_authorization(agent.post(&url), authorization).header("Content-Length", "0").send_empty()
        })?;
        self.check(&mut response, path)?;
        let location = response.headers().get("location").and_then(|h| h.to_str().ok()).ok_or_else(|| {
            RegistryError::Config(format!("{url} opened an upload without saying where (no Location)"))
        })?;
        let location =
            if location.starts_with('/') { format!("{}{location}", self.base) } else { location.to_string() };
        // The credentials go only where they came from; an upload sent elsewhere (storage
        // behind the registry) goes without them, and never from HTTPS down to plain HTTP.
        let same_origin = location.starts_with(&format!("{}/", self.base));
        if !same_origin && self.base.starts_with("https://") && !location.starts_with("https://") {
            return Err(RegistryError::Config(format!("{url} sent the upload to {location}, which is not HTTPS")));
        }
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{separator}digest={digest}");
        let authorization = self.authorization.as_deref().filter(|_| same_origin);
        let mut response = with_authorization(self.agent.put(&put), authorization)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", size)
            .send(ureq::SendBody::from_reader(content))
            .map_err(|e| RegistryError::Network { url: put.clone(), reason: e.to_string() })?;
        self.check(&mut response, &format!("blobs/{digest}"))
    }

    /// Puts a manifest (or index) of `media_type` under `reference`, a tag or its digest.
    pub fn push_manifest(&mut self, reference: &str, media_type: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let path = format!("manifests/{reference}");
        let url = self.url(&path);
        let mut response = self.authorized(&url, |agent, authorization| {
            with_authorization(agent.put(&url), authorization).header("Content-Type", media_type).send(bytes)
        })?;
        self.check(&mut response, &path)
    }
}

fn with_authorization<B>(request: ureq::RequestBuilder<B>, authorization: Option<&str>) -> ureq::RequestBuilder<B> {
    match authorization {
        Some(authorization) => request.header("Authorization", authorization),
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_plain_http() {
        assert_eq!(scheme_for("127.0.0.1:5000"), "http");
        assert_eq!(scheme_for("localhost:5000"), "http");
        assert_eq!(scheme_for("localhost"), "http");
        assert_eq!(scheme_for("[::1]:5000"), "http");
        assert_eq!(scheme_for("ghcr.io"), "https");
        assert_eq!(scheme_for("127example.com"), "https");
    }
}
