//! Command-line interface (clap). Flag names and rules follow the original Fledge, minus its
//! root requirement.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::manifest::ManifestFormat;

#[derive(Debug, Parser)]
#[command(name = "fledge", about = "Build microVM boot artifacts (initramfs, rootfs images) and Volant manifests, without a Docker daemon or root", version = crate::VERSION, disable_version_flag = false)]
pub struct Cli {
    /// Show debug logs
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Show errors only (wins over --verbose)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an artifact from fledge.toml, or directly from a Dockerfile
    Build(Box<BuildArgs>),
    /// Manage images in the local store (pull, list, inspect, remove)
    #[command(subcommand)]
    Image(ImageCommand),
    /// Boot an artifact in a microVM and exit with its workload's status
    Run(RunArgs),
    /// Build and install the guest kernel
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Delete store blobs that no image uses any more
    Prune,
    /// Look inside the Dockerfile frontend (for people and tests)
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Print version information
    Version,
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Print a Dockerfile's syntax tree in the line format of BuildKit's parser tests
    Parse {
        /// The Dockerfile
        dockerfile: PathBuf,
    },
    /// Print the LLB definition a Dockerfile lowers to (base images come from the store,
    /// pulled when missing)
    Llb {
        /// The Dockerfile; its directory is the build context
        dockerfile: PathBuf,
        /// Build this stage instead of the last one
        #[arg(long, value_name = "STAGE")]
        target: Option<String>,
        /// Set a build argument (repeatable)
        #[arg(long = "build-arg", value_name = "KEY=VALUE")]
        build_args: Vec<String>,
        /// Target platform [default: linux/amd64]
        #[arg(long, value_name = "OS/ARCH")]
        platform: Option<String>,
        /// json: one op per line (digest, inputs, op); pb: the raw pb.Definition, as
        /// `buildctl build --local context=DIR --local dockerfile=DIR` reads it on stdin
        #[arg(long, value_enum, default_value = "json")]
        format: LlbFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LlbFormat {
    Json,
    Pb,
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Build Fledge's guest kernel (vmlinux and bzImage) from a kernel source tarball; cached
    Build {
        /// Kernel source tarball [default: Debian's /usr/src/linux-source-*.tar.xz]
        #[arg(long, value_name = "TARBALL")]
        source: Option<PathBuf>,
        /// Add ACPI (for Cloud Hypervisor)
        #[arg(long)]
        acpi: bool,
        /// Parallel compile jobs [default: the number of CPUs]
        #[arg(short, long, value_name = "N")]
        jobs: Option<usize>,
        /// Also install to /var/lib/volant/kernel for every user (needs write access there)
        #[arg(long)]
        install_system: bool,
    },
    /// Use a distro kernel: a Debian linux-image .deb (kernel, config and the modules guests
    /// need) or a bare bzImage/vmlinuz
    Import {
        /// The .deb or kernel image
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry into the local store
    Pull {
        /// Image reference, e.g. nginx:alpine or localhost:5000/app@sha256:...
        reference: String,
        /// Platform to pull from a multi-platform image [default: this machine's]
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
    },
    /// Import an image from an OCI layout (directory or tarball) or a docker save archive
    Import {
        /// oci-layout:PATH[:TAG|@DIGEST] or docker-archive:PATH
        source: String,
        /// Platform to pick from a multi-platform layout [default: this machine's]
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
    },
    /// List images in the local store
    #[command(alias = "list")]
    Ls,
    /// Show an image's manifest digest, config and layers as JSON
    Inspect {
        /// Image reference
        reference: String,
    },
    /// Write an image as an OCI layout tarball (readable by skopeo, podman, buildah)
    Export {
        /// Image reference
        reference: String,
        /// Output file
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Remove an image's name from the store (its blobs go with `fledge prune`)
    Rm {
        /// Image references
        #[arg(required = true)]
        references: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Dockerfile to build directly (Dockerfile mode); without it, fledge.toml is used
    #[arg(value_name = "DOCKERFILE")]
    pub dockerfile_arg: Option<PathBuf>,
    /// Dockerfile to build (same as the positional argument)
    #[arg(long, value_name = "PATH")]
    pub dockerfile: Option<PathBuf>,
    /// Build configuration [default: fledge.toml]
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Runtime manifest template [default: manifest.toml beside the config]
    #[arg(short, long, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// Artifact path (a directory puts the default name inside it)
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Shape of the manifest JSON [default: fledge.toml's manifest_format, else fledge]
    #[arg(long, value_name = "FORMAT", value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(ManifestFormat::NAMES), |s| s.parse::<ManifestFormat>().expect("listed values parse")))]
    pub manifest_format: Option<ManifestFormat>,
    /// Build context directory (Dockerfile mode) [default: the Dockerfile's directory]
    #[arg(long, value_name = "DIR")]
    pub context: Option<PathBuf>,
    /// Stage to build in a multi-stage Dockerfile
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Build argument KEY=VALUE (repeatable)
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Dockerfile mode: produce an initramfs (.cpio.gz) instead of a rootfs image
    #[arg(long)]
    pub output_initramfs: bool,
    /// Dockerfile mode: a secret for RUN --mount=type=secret (repeatable); never stored in
    /// a layer or a cache key
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    pub secrets: Vec<String>,
    /// Dockerfile builds: an image a FROM can name, from a local OCI layout or the store,
    /// served to a daemon from here (NAME=oci-layout:PATH[:TAG|@DIGEST] or
    /// NAME=docker-image://REF; repeatable)
    #[arg(long = "build-context", value_name = "NAME=SOURCE")]
    pub build_contexts: Vec<String>,
    /// Dockerfile builds on a daemon: export the build cache (`type=registry,ref=REF`, as
    /// buildctl's --export-cache; repeatable)
    #[arg(long = "cache-to", value_name = "type=TYPE,KEY=VALUE,...")]
    pub cache_to: Vec<String>,
    /// Dockerfile builds on a daemon: import a build cache (`type=registry,ref=REF`; repeatable)
    #[arg(long = "cache-from", value_name = "type=TYPE,KEY=VALUE,...")]
    pub cache_from: Vec<String>,
    /// Build an LLB definition (a pb.Definition, as `fledge debug llb --format pb` writes it)
    /// instead of a Dockerfile; its local source `context` is --context
    #[arg(long, value_name = "FILE")]
    pub llb: Option<PathBuf>,
    /// Dockerfile builds: also write the built image as an OCI image layout tarball (`-o`
    /// stays the artifact's path)
    #[arg(long, value_name = "FILE")]
    pub export_oci: Option<PathBuf>,
    /// Progress output of Dockerfile builds: auto, tty, plain, or rawjson (one JSON status
    /// per step on stdout, for tools)
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Grant an entitlement build steps may ask for, as buildctl's --allow (repeatable):
    /// security.insecure lets `RUN --security=insecure` keep every capability. (network.host
    /// cannot be granted: steps run in a microVM.)
    #[arg(long = "allow", value_enum, value_name = "ENTITLEMENT")]
    pub allow: Vec<Entitlement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Entitlement {
    #[value(name = "security.insecure")]
    SecurityInsecure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Rawjson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VmmChoice {
    Qemu,
    CloudHypervisor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if a probe boot shows it runs guests on this host (remembered), else TCG
    Auto,
    /// Hardware virtualisation (needs a working /dev/kvm)
    Kvm,
    /// Software emulation (slow, works everywhere)
    Tcg,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The artifact to boot: an initramfs (.cpio.gz, .cpio.lz4, .cpio.zst) or a squashfs, ext4
    /// or erofs rootfs image (booted read-only under a tmpfs overlay)
    #[arg(value_name = "ARTIFACT")]
    pub artifact: PathBuf,
    /// Size of the writable tmpfs layer over a rootfs image [default: half the guest's memory]
    #[arg(long, value_name = "SIZE")]
    pub overlay_size: Option<String>,
    /// Stop the guest after this many seconds and exit 124 (0: never)
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
    /// Virtual CPUs
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Guest memory, e.g. 512M or 2G
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// Virtual machine monitor (Cloud Hypervisor needs a KVM that runs guests)
    #[arg(long, value_enum, env = "FLEDGE_VMM", default_value = "qemu")]
    pub vmm: VmmChoice,
    /// How the guest's code runs
    #[arg(long, value_enum, env = "FLEDGE_ACCEL", default_value = "auto")]
    pub accel: AccelChoice,
    /// Run this command instead of the image's workload (after --)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}
