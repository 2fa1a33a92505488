//! The build VM's agent, end to end: a real guest (QEMU, the kernel `make test` built)
//! whose guest-init serves gRPC over vsock, driven through `fledge::build_vm`. A squashfs
//! rootfs that Fledge built from a registry image is mounted from a read-only disk under an
//! overlay, and every call of the service is used on it.
//!
//! Needs `FLEDGE_TEST_KERNEL_STATE`, QEMU, vhost-device-vsock and docker-registry; skips,
//! saying why, without them.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use fledge::build_vm::BuildVm;
use fledge::cli::VmmChoice;
use fledge::microvm::{GuestKernel, Machine};
use fledge_agent::client::{AgentClient, AgentError, ExecIo, ExitStatus, Process};
use fledge_agent::pb;
use fledge_vmm::Disk;
use fledge_vmm::qemu::Accel;

/// A squashfs rootfs of the layered busybox test image, built by Fledge.
fn busybox_rootfs(registry: &registry::Registry, p: &Project) -> PathBuf {
    let builder = Project::new();
    let image = layered_test_image(registry, &builder, "fledge/agent-root");
    std::fs::copy(agent_binary(), p.path("agent")).unwrap();
    p.write("manifest.toml", "name = \"a\"\nversion = \"1\"\nruntime = \"a\"\n");
    p.write("fledge.toml", &format!("version = \"1\"\nstrategy = \"oci_rootfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nimage = \"{image}\"\n"));
    assert_success(&run(p.fledge().args(["build", "-o", "root.squashfs"])));
    p.path("root.squashfs")
}

/// Runs `args` in the overlay root; returns (status, stdout, stderr).
async fn exec(agent: &mut AgentClient, process: Process, stdin: Option<Vec<u8>>) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let stdin = stdin.map(|data| Box::new(std::io::Cursor::new(data)) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
    let io = ExecIo { stdin, stdout: &mut out, stderr: &mut err, signals: None };
    let status = agent.exec(&process, io).await.unwrap();
    (status, out, err)
}

/// The kernel `make test` built, under TCG.
fn fledge_kernel(state: &std::path::Path) -> Machine {
    let dir = state.join("kernel");
    let acpi = fledge::kernel_build::has_acpi(&dir).unwrap_or(true);
    let kernel = GuestKernel { image: dir.join("vmlinux"), acpi, modules: None };
    Machine { vmm: VmmChoice::Qemu, accel: Accel::Tcg, kernel }
}

fn in_root(args: &[&str]) -> Process {
    Process { args: args.iter().map(|a| a.to_string()).collect(), root: "/rootfs".into(), ..Process::default() }
}

#[test]
fn the_agent_runs_processes_and_moves_files_in_a_build_vm() {
    let state = need!(kernel_state());
    let registry = need!(registry::start());
    let p = Project::new();
    let rootfs = busybox_rootfs(&registry, &p);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let machine = fledge_kernel(&state);
        let disks = vec![Disk { path: rootfs.clone(), read_only: true, serial: None }];
        let mut vm = BuildVm::boot(&machine, disks, (1, 256), false).await.unwrap();
        let agent = vm.agent();
        let info = agent.info().await.unwrap();
        assert!(info.kernel_release.starts_with("6."), "{info:?}");

        // The layer image read-only below a tmpfs upper: the shape of a RUN step.
        let mount = |source: &str, target: &str, fstype: &str, read_only| pb::MountRequest {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            options: String::new(),
            read_only,
            bind: false,
        };
        agent.mount(mount("/dev/vda", "/layers/0", "squashfs", true)).await.unwrap();
        agent.mount(mount("tmpfs", "/scratch", "tmpfs", false)).await.unwrap();
        let overlay = pb::MountOverlayRequest {
            lower: vec!["/layers/0".into()],
            upper: "/scratch/upper".into(),
            work: "/scratch/work".into(),
            target: "/rootfs".into(),
        };
        agent.mount_overlay(overlay).await.unwrap();

        // The image has only `sh` and `ls`: the applets' links are the first write to the upper.
        let (status, _, _) = exec(agent, in_root(&["/bin/busybox", "--install", "-s", "/bin"]), None).await;
        assert_eq!(status, ExitStatus::Exited(0));

        // 1 MiB of random bytes in, and back out exactly on stdout and stderr.
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let written = agent.write_file("/rootfs/data.bin", (0o640, 1000, 1000), std::io::Cursor::new(data.clone()));
        assert_eq!(written.await.unwrap(), 1 << 20);
        let (status, out, err) =
            exec(agent, in_root(&["sh", "-c", "cat /data.bin; cat /data.bin >&2; exit 7"]), None).await;
        assert_eq!(status, ExitStatus::Exited(7));
        assert!(
            out == data,
            "stdout is the file exactly ({} bytes; stderr {:?})",
            out.len(),
            String::from_utf8_lossy(&err[..err.len().min(300)])
        );
        assert!(err == data, "stderr is the file exactly ({} bytes)", err.len());
        let (_, out, _) = exec(agent, in_root(&["stat", "-c", "%a %u:%g %s", "/data.bin"]), None).await;
        assert_eq!(String::from_utf8_lossy(&out), "640 1000:1000 1048576\n");
        let mut back = Vec::new();
        assert_eq!(agent.read_file("/rootfs/data.bin", &mut back, 2 << 20).await.unwrap(), 1 << 20);
        assert!(back == data);
        let limited = agent.read_file("/rootfs/data.bin", &mut Vec::new(), 1000).await.unwrap_err();
        assert!(matches!(limited, AgentError::Protocol(_)), "{limited}");

        // User, working directory (created), environment and stdin.
        let mut process = in_root(&["sh", "-c", "id -u; id -g; pwd; echo \"$GREETING\"; wc -c"]);
        process.user = "1000:1000".into();
        process.cwd = "/work/dir".into();
        process.env = vec!["GREETING=hello".into()];
        let (status, out, _) = exec(agent, process, Some(vec![b'x'; 100_000])).await;
        assert_eq!(status, ExitStatus::Exited(0));
        assert_eq!(String::from_utf8_lossy(&out), "1000\n1000\n/work/dir\nhello\n100000\n");
        let mut unknown = in_root(&["true"]);
        unknown.user = "nobody".into();
        let mut sink = (Vec::new(), Vec::new());
        let io = ExecIo { stdin: None, stdout: &mut sink.0, stderr: &mut sink.1, signals: None };
        let refused = agent.exec(&unknown, io).await.unwrap_err().to_string();
        assert!(refused.contains("unable to find user nobody"), "{refused}");
        let io = ExecIo { stdin: None, stdout: &mut sink.0, stderr: &mut sink.1, signals: None };
        let missing = agent.exec(&in_root(&["no-such-program"]), io).await.unwrap_err().to_string();
        assert!(missing.contains("cannot run no-such-program: no such file or directory"), "{missing}");

        // A signal reaches the process; its status says so.
        let (signals_tx, signals) = tokio::sync::mpsc::channel(1);
        let io = ExecIo { stdin: None, stdout: &mut sink.0, stderr: &mut sink.1, signals: Some(signals) };
        let sleeper = in_root(&["sh", "-c", "echo started; exec sleep 30"]);
        let (status, ()) = tokio::join!(agent.exec(&sleeper, io), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            signals_tx.send(15).await.unwrap();
        });
        assert_eq!(status.unwrap(), ExitStatus::Signaled(15));

        // Tar streams in and out keep names, modes, owners and links.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o751);
        header.set_uid(123);
        header.set_gid(456);
        header.set_mtime(1_700_000_000);
        tar.append_data(&mut header, "sub/file", &b"hello"[..]).unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(0);
        tar.append_link(&mut link, "link", "sub/file").unwrap();
        let tar = tar.into_inner().unwrap();
        assert_eq!(agent.put_tar("/rootfs/unpacked", std::io::Cursor::new(tar)).await.unwrap(), 2);
        let (_, out, _) = exec(
            agent,
            in_root(&["sh", "-c", "cd /unpacked; stat -c '%n %a %u:%g' sub/file; readlink link; cat link"]),
            None,
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&out), "sub/file 751 123:456\nsub/file\nhello");
        let mut packed = Vec::new();
        agent.get_tar("/rootfs/unpacked", &mut packed, 1 << 20).await.unwrap();
        let mut archive = tar::Archive::new(&packed[..]);
        let entries: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                format!(
                    "{} {:o} {}:{}",
                    e.path().unwrap().display(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap()
                )
            })
            .collect();
        assert_eq!(entries, ["link 777 0:0", "sub 755 0:0", "sub/file 751 123:456"]);

        // The upper as an OCI layer, as BuildKit's differ writes it: a deleted lower file is a
        // whiteout; a directory replaced wholesale (opaque in the overlay) gets a whiteout
        // for each lower entry it hid, no opaque marker; a hard link survives; of the
        // extended attributes only security.capability is kept.
        let changes = "rm /data/c && rm -rf /home/user && mkdir /home/user && echo new > /home/user/f \
                       && ln /home/user/f /home/user/g && setfattr -n user.k -v v /home/user/f 2>/dev/null; \
                       echo made";
        let (status, out, err) = exec(agent, in_root(&["sh", "-c", changes]), None).await;
        assert_eq!(status, ExitStatus::Exited(0), "{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
        let mut layer = Vec::new();
        agent.get_layer_diff("/scratch/upper", "/layers/0", &mut layer, 8 << 20).await.unwrap();
        let mut archive = tar::Archive::new(&layer[..]);
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            if name == "home/user/g" {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Link);
                assert_eq!(entry.link_name().unwrap().unwrap().display().to_string(), "home/user/f");
            }
            if let Some(extensions) = entry.pax_extensions().unwrap() {
                for extension in extensions {
                    let extension = extension.unwrap();
                    assert!(!extension.key().unwrap().contains("xattr.user"), "only security.capability is kept");
                }
            }
            names.push(name);
        }
        for expected in ["data/.wh.c", "home/user/.wh.notes", "home/user/f", "home/user/g", "data.bin"] {
            assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
        }
        for absent in ["data/c", "home/user/.wh..wh..opq", "etc/", "etc/hostname"] {
            assert!(!names.iter().any(|n| n == absent), "{absent} in {names:?}");
        }

        // An OCI layer with whiteouts becomes an overlay lower layer over the image.
        let mut layer = tar::Builder::new(Vec::new());
        for (name, data) in [("etc/.wh.motd", &b""[..]), ("data/.wh..wh..opq", b""), ("data/new", b"fresh\n")] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            layer.append_data(&mut header, name, data).unwrap();
        }
        let layer = layer.into_inner().unwrap();
        assert_eq!(agent.put_layer("/layers/1", std::io::Cursor::new(layer)).await.unwrap(), 3);
        let stacked = pb::MountOverlayRequest {
            lower: vec!["/layers/1".into(), "/layers/0".into()],
            target: "/stacked".into(),
            ..Default::default()
        };
        agent.mount_overlay(stacked).await.unwrap();
        let check = "test -e /etc/motd || echo motd-gone; ls /data; /bin/busybox cat /data/new; test -x /bin/busybox && echo image-intact";
        let mut process = in_root(&["/bin/busybox", "sh", "-c", check]);
        process.root = "/stacked".into();
        let (_, out, _) = exec(agent, process, None).await;
        assert_eq!(String::from_utf8_lossy(&out), "motd-gone\nnew\nfresh\nimage-intact\n");

        // Writes went to the upper; the read-only layer is untouched. The process's mount
        // points for /proc and /sys, which the image lacks, stay, as runc leaves them.
        let (_, out, _) = exec(
            agent,
            Process {
                args: vec!["/rootfs/bin/busybox".into(), "ls".into(), "/scratch/upper".into()],
                ..Process::default()
            },
            None,
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&out), "bin\ndata\ndata.bin\nhome\nproc\nsys\nunpacked\nwork\n");
        agent.unmount("/rootfs", Vec::new()).await.unwrap();
        vm.shutdown().await.unwrap();
    });
}
