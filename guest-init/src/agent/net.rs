//! `fledge.net=user` on the kernel command line: the VMM gives the guest user-mode
//! networking (QEMU's slirp), whose addresses are fixed: the guest is 10.0.2.15/24, the host
//! and gateway 10.0.2.2, the DNS server 10.0.2.3. guest-init brings up `lo` and `eth0`, adds
//! the default route and writes a resolv.conf for build steps to get.

use std::io;
use std::net::Ipv4Addr;

use fledge_agent::STEP_RESOLV_CONF;

/// Keeps the kernel's fallback tunnel devices (`sit0` and the like) out of the network
/// namespaces steps get: a `RUN --network=none` step sees only `lo`, as under runc on a host
/// whose kernel builds these tunnels as modules.
pub fn no_fallback_tunnels() -> io::Result<()> {
    std::fs::write("/proc/sys/net/core/fb_tunnels_only_for_init_net", "1")
}

pub fn requested(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|arg| arg == "fledge.net=user")
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is valid; the name fits (checked by the callers' constants).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    request
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(address).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is how the
    // interface ioctls take an IPv4 address.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn up(socket: libc::c_int, name: &str) -> io::Result<()> {
    let mut request = ifreq(name);
    // SAFETY: ioctls on a socket we own with a request struct for `name`.
    unsafe {
        check(libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request))?;
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        check(libc::ioctl(socket, libc::SIOCSIFFLAGS, &request))
    }
}

/// Configures the network; problems are reported, and steps then run without one.
pub fn configure() {
    if let Err(e) = try_configure() {
        crate::warn(format_args!("cannot set up the network: {e}"));
    }
}

fn try_configure() -> io::Result<()> {
    // SAFETY: a plain socket for interface ioctls, closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(socket)?;
    let result = (|| {
        up(socket, "lo")?;
        let mut request = ifreq("eth0");
        request.ifr_ifru.ifru_addr = sockaddr(Ipv4Addr::new(10, 0, 2, 15));
        // SAFETY: as in `up`.
        unsafe { check(libc::ioctl(socket, libc::SIOCSIFADDR, &request))? };
        request.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::new(255, 255, 255, 0));
        // SAFETY: as in `up`.
        unsafe { check(libc::ioctl(socket, libc::SIOCSIFNETMASK, &request))? };
        up(socket, "eth0")?;
        // SAFETY: an all-zero rtentry is valid; the fields set below make a default route.
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr(Ipv4Addr::new(10, 0, 2, 2));
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // SAFETY: as in `up`.
        unsafe { check(libc::ioctl(socket, libc::SIOCADDRT, &route)) }
    })();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(socket) };
    result?;
    std::fs::create_dir_all("/run/fledge-net")?;
    std::fs::write(STEP_RESOLV_CONF, "nameserver 10.0.2.3\n")?;
    Ok(())
}
