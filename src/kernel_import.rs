//! `fledge kernel import`: a distro kernel as the guest kernel. From a Debian `linux-image`
//! package (or a bare `vmlinuz`) it installs into `$FLEDGE_STATE_DIR/kernel/`:
//! - `bzImage`, and `vmlinux`: the ELF inside the bzImage (for VMMs that boot PVH ELFs),
//!   when its payload is LZ4, gzip or zstd;
//! - `config`, the kernel's configuration (so `fledge run` knows it wants ACPI);
//! - `modules.cpio`: the modules microVM guests need (virtio-mmio, virtio-blk, vsock, overlay,
//!   squashfs, erofs) with everything they depend on, in an uncompressed cpio that `fledge
//!   run` appends to the initramfs; guest-init loads them in dependency order at boot.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::paths::ImagePath;
use crate::progress::Progress;
use crate::rootfs::{FileData, Node, Tree};

/// What guests need from modules, by module name; their dependencies come along.
const WANTED: [&str; 9] = [
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "vmw_vsock_virtio_transport",
    "overlay",
    "squashfs",
    "erofs",
    "ext4",
    "virtio_rng",
];
/// Where guest-init finds them (it reads `order` and loads each file listed).
pub const MODULES_DIR: &str = "/lib/fledge/modules";

/// A `.ko` file's `.modinfo` section: `(name, depends)`.
fn modinfo(ko: &[u8]) -> Option<(String, Vec<String>)> {
    let u16_at = |o: usize| ko.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| ko.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if ko.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)? as usize, u16_at(0x3a)? as usize, u16_at(0x3c)? as usize, u16_at(0x3e)? as usize);
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff + i * shentsize;
        let name = u32::from_le_bytes(ko.get(h..h + 4)?.try_into().ok()?);
        Some((name, u64_at(h + 0x18)? as usize, u64_at(h + 0x20)? as usize))
    };
    let (_, names_at, names_len) = section(shstrndx)?;
    let names = ko.get(names_at..names_at + names_len)?;
    let (_, at, len) = (0..shnum).filter_map(section).find(|(name, _, _)| {
        names.get(*name as usize..).and_then(|n| n.split(|&b| b == 0).next()) == Some(b".modinfo")
    })?;
    let mut name = None;
    let mut depends = Vec::new();
    for field in ko.get(at..at + len)?.split(|&b| b == 0) {
        let field = String::from_utf8_lossy(field);
        if let Some(n) = field.strip_prefix("name=") {
            name = Some(n.to_string());
        } else if let Some(d) = field.strip_prefix("depends=") {
            depends.extend(d.split(',').filter(|s| !s.is_empty()).map(str::to_string));
        }
    }
    Some((name?, depends))
}

/// `wanted` and their dependencies, each after what it depends on.
fn load_order(modules: &HashMap<String, (Vec<String>, Vec<u8>)>, wanted: &[&str]) -> Vec<String> {
    fn visit(name: &str, modules: &HashMap<String, (Vec<String>, Vec<u8>)>, order: &mut Vec<String>) {
        if order.iter().any(|n| n == name) {
            return;
        }
        if let Some((depends, _)) = modules.get(name) {
            for d in depends {
                visit(d, modules, order);
            }
            order.push(name.to_string());
        }
    }
    let mut order = Vec::new();
    for name in wanted {
        visit(name, modules, &mut order);
    }
    order
}

/// The uncompressed kernel ELF inside a bzImage, if its payload is a format we read.
fn vmlinux_of(bzimage: &[u8]) -> Option<Vec<u8>> {
    if bzimage.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let setup_sects = match *bzimage.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let u32_at = |o: usize| bzimage.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let start = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    let payload = bzimage.get(start..start + u32_at(0x24c)? as usize)?;
    let elf = match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => lz4_legacy_decode(&payload[4..])?,
        [0x1f, 0x8b, ..] => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(payload).read_to_end(&mut out).ok()?;
            out
        }
        // x86 appends the uncompressed size after the zstd frame.
        [0x28, 0xb5, 0x2f, 0xfd, ..] => zstd::decode_all(&payload[..payload.len().saturating_sub(4)]).ok()?,
        _ => return None,
    };
    (elf.get(..4)? == b"\x7fELF").then_some(elf)
}

/// Blocks of the legacy LZ4 frame (after its magic): a size, then a block of at most 8 MiB
/// of output, up to the uncompressed size the kernel appends. Anything else (a truncated or
/// corrupt block) is `None`, never a partial kernel.
fn lz4_legacy_decode(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while data.len() > 4 {
        let size = u32::from_le_bytes(data[..4].try_into().ok()?) as usize;
        if size == 0x184C_2102 {
            data = &data[4..];
            continue;
        }
        out.extend(lz4::block::decompress(data.get(4..4 + size)?, Some(8 << 20)).ok()?);
        data = &data[4 + size..];
    }
    (data.len() == 4 && u32::from_le_bytes(data.try_into().ok()?) as usize == out.len()).then_some(out)
}

/// The files of a Debian package: the kernel, its config and its modules.
struct Package {
    vmlinuz: Vec<u8>,
    config: Option<Vec<u8>>,
    /// Module name → (dependencies, bytes).
    modules: HashMap<String, (Vec<String>, Vec<u8>)>,
}

fn read_deb(path: &Path) -> Result<Package> {
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run dpkg-deb, which reads Debian packages (install dpkg)")?;
    let mut archive = tar::Archive::new(child.stdout.take().expect("piped"));
    let mut package = Package { vmlinuz: Vec::new(), config: None, modules: HashMap::new() };
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let file = name.rsplit('/').next().unwrap_or_default().to_string();
        let mut read = || -> io::Result<Vec<u8>> {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            Ok(data)
        };
        if name.contains("boot/vmlinuz-") {
            package.vmlinuz = read()?;
        } else if name.contains("boot/config-") {
            package.config = Some(read()?);
        } else if name.contains("/lib/modules/") && file.ends_with(".ko") {
            let data = read()?;
            if let Some((module, depends)) = modinfo(&data) {
                package.modules.insert(module, (depends, data));
            }
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("dpkg-deb cannot read {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    if package.vmlinuz.is_empty() {
        bail!("{} holds no /boot/vmlinuz-*: not a linux-image package", path.display());
    }
    Ok(package)
}

/// Writes the modules in `order` as an uncompressed cpio for appending to an initramfs.
fn modules_cpio(package: &Package, order: &[String], dest: &Path) -> Result<()> {
    let mut tree = Tree::default();
    let dir = ImagePath::parse(MODULES_DIR).expect("constant path");
    tree.mkdir_all(&dir, 0o755)?;
    let mut list = String::new();
    for (i, name) in order.iter().enumerate() {
        let file = format!("{i:02}-{name}.ko");
        let data = FileData::Bytes(package.modules[name].1.clone().into());
        tree.insert(&dir.join(&file), Node::File { mode: 0o644, data })?;
        list.push_str(&file);
        list.push('\n');
    }
    tree.insert(&dir.join("order"), Node::File { mode: 0o644, data: FileData::Bytes(list.into_bytes().into()) })?;
    let mut out = io::BufWriter::new(fs::File::create(dest)?);
    crate::initramfs::cpio::write_tree(&tree, &crate::rootfs::walk::NoLayers, &mut out, 0, &mut |_| {})?;
    io::Write::flush(&mut out)?;
    Ok(())
}

/// Imports the kernel at `source` into `$state_dir/kernel/`; returns that directory.
pub fn import(source: &Path, state_dir: &Path, progress: &Progress) -> Result<PathBuf> {
    let head = {
        let mut head = [0u8; 8];
        let n = fs::File::open(source)
            .and_then(|mut f| f.read(&mut head))
            .with_context(|| format!("cannot open {}", source.display()))?;
        head[..n].to_vec()
    };
    let package = if head.starts_with(b"!<arch>\n") {
        read_deb(source)?
    } else {
        Package { vmlinuz: fs::read(source)?, config: None, modules: HashMap::new() }
    };
    let vmlinux = vmlinux_of(&package.vmlinuz);
    if package.vmlinuz.get(0x202..0x206) != Some(b"HdrS") {
        bail!("{}: not a bzImage kernel (no Linux boot header)", source.display());
    }
    let order = load_order(&package.modules, &WANTED);

    let dir = state_dir.join("kernel");
    fs::create_dir_all(&dir)?;
    let work = tempfile::Builder::new().prefix(".import-").tempdir_in(&dir)?;
    let mut files: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let put = |name: &'static str, data: &[u8], files: &mut BTreeMap<&str, PathBuf>| -> Result<()> {
        let path = work.path().join(name);
        fs::write(&path, data)?;
        files.insert(name, path);
        Ok(())
    };
    put("bzImage", &package.vmlinuz, &mut files)?;
    if let Some(elf) = &vmlinux {
        put("vmlinux", elf, &mut files)?;
    }
    if let Some(config) = &package.config {
        put("config", config, &mut files)?;
    }
    if !order.is_empty() {
        let path = work.path().join("modules.cpio");
        modules_cpio(&package, &order, &path)?;
        files.insert("modules.cpio", path);
    }
    // Replace the installed kernel as a whole: nothing of the previous one may remain.
    for name in ["vmlinux", "bzImage", "config", "modules.cpio"] {
        match files.get(name) {
            Some(path) => fs::rename(path, dir.join(name))?,
            None => match fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            },
        }
    }
    progress.say(&format!(
        "Imported {}: bzImage{}, {} module(s){}",
        source.display(),
        if vmlinux.is_some() { ", vmlinux" } else { " (its payload format is not one Fledge unpacks, so no vmlinux)" },
        order.len(),
        if order.is_empty() { String::new() } else { format!(" ({})", order.join(", ")) }
    ));
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies_and_only_once() {
        let m = |deps: &[&str]| (deps.iter().map(|d| d.to_string()).collect::<Vec<_>>(), Vec::new());
        let modules: HashMap<String, (Vec<String>, Vec<u8>)> = [
            ("virtio_blk".to_string(), m(&["virtio", "virtio_ring"])),
            ("virtio".to_string(), m(&["virtio_ring"])),
            ("virtio_ring".to_string(), m(&[])),
            ("virtio_mmio".to_string(), m(&["virtio", "virtio_ring"])),
        ]
        .into();
        assert_eq!(
            load_order(&modules, &["virtio_mmio", "virtio_blk", "absent"]),
            ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"]
        );
    }

    #[test]
    fn legacy_lz4_frames_decode_to_the_original() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut framed = Vec::new();
        let mut enc = crate::compress::lz4_legacy::Lz4Legacy::new(&mut framed, 1);
        io::Write::write_all(&mut enc, &data).unwrap();
        enc.finish().unwrap();
        framed.extend_from_slice(&(data.len() as u32).to_le_bytes()); // as the kernel appends
        assert_eq!(lz4_legacy_decode(&framed[4..]).unwrap(), data);
    }
}
