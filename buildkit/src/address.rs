//! Where buildkitd listens: `unix:///path/to/buildkitd.sock` or `tcp://host:port`
//! (`FLEDGE_BUILDKIT_ADDR`; buildctl's `--addr` forms).

use std::path::PathBuf;

/// The default, as buildctl's.
pub const DEFAULT: &str = "unix:///run/buildkit/buildkitd.sock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "buildkitd address {0:?} is not one Fledge can use: expected unix:///path/to/buildkitd.sock or tcp://host:port"
)]
pub struct BadAddress(pub String);

impl Address {
    pub fn parse(text: &str) -> Result<Self, BadAddress> {
        let bad = || BadAddress(text.to_string());
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            let rest = rest.trim_end_matches('/');
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || host.contains('/') {
                return Err(bad());
            }
            return Ok(Address::Tcp { host: host.to_string(), port: port.parse().map_err(|_| bad())? });
        }
        Err(bad())
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
            Address::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_and_tcp_addresses_parse_and_others_are_refused() {
        assert_eq!(Address::parse(DEFAULT).unwrap(), Address::Unix("/run/buildkit/buildkitd.sock".into()));
        assert_eq!(
            Address::parse("tcp://127.0.0.1:1234").unwrap(),
            Address::Tcp { host: "127.0.0.1".into(), port: 1234 }
        );
        assert_eq!(Address::parse("tcp://[::1]:1234").unwrap(), Address::Tcp { host: "::1".into(), port: 1234 });
        assert_eq!(Address::parse("tcp://[::1]:1234").unwrap().to_string(), "tcp://[::1]:1234");
        for bad in [
            "docker-container://buildkit",
            "unix://relative.sock",
            "tcp://host",
            "tcp://:1",
            "/run/x.sock",
            "tcp://h:port",
        ] {
            assert_eq!(Address::parse(bad), Err(BadAddress(bad.to_string())), "{bad}");
        }
    }
}
