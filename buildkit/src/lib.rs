//! A client of BuildKit's daemon, for `FLEDGE_BUILDKIT_MODE=daemon`: it connects to buildkitd
//! ([`address`]), asks what it is ([`Daemon::info`]), and solves a build ([`Daemon::solve`])
//! while serving the daemon, inside the session tunnel ([`tunnel`]), what the build needs from
//! this side: the local directories (`FileSync`, [`filesync`]), secrets, registry
//! credentials, a health check, and a place for the exported result (`FileSend`).
//!
//! The protobuf types are generated from this crate's own `.proto` files (`proto/`), written
//! from the field tables in the reference; LLB types are `fledge_llb::pb`'s.

pub mod address;
mod client;
pub mod filesync;
mod services;
pub mod tls;
pub mod tunnel;

pub use client::{Daemon, DaemonError, Session, SolveEvents};
pub use services::{ContentStore, Credentials, Output};

/// Generated protobuf and gRPC code, in modules that mirror the protobuf packages (the
/// generated code refers across packages by those paths), with short names for each.
pub mod pb {
    pub mod moby {
        pub mod buildkit {
            pub mod v1 {
                tonic::include_proto!("moby.buildkit.v1");
            }
            pub mod secrets {
                pub mod v1 {
                    tonic::include_proto!("moby.buildkit.secrets.v1");
                }
            }
        }
        pub mod filesync {
            pub mod v1 {
                tonic::include_proto!("moby.filesync.v1");
            }
        }
    }
    pub mod fsutil {
        pub mod types {
            tonic::include_proto!("fsutil.types");
        }
    }
    pub mod containerd {
        pub mod services {
            pub mod content {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.content.v1");
                }
            }
        }
    }
    pub mod grpc {
        pub mod health {
            pub mod v1 {
                tonic::include_proto!("grpc.health.v1");
            }
        }
    }
    pub use containerd::services::content::v1 as content;
    pub use fsutil::types as fsutil_types;
    pub use grpc::health::v1 as health;
    pub use moby::buildkit::secrets::v1 as secrets;
    pub use moby::buildkit::v1 as control;
    pub use moby::filesync::v1 as filesync;
}
