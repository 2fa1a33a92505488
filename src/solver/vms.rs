//! The build VMs of a build: booted when a step first needs one, reused by the steps that
//! follow (preferring the VM that already holds a step's layers, so a stage chain stays on
//! one VM), and more of them, up to a limit, when independent stages run at once. The limit
//! is the host's CPUs and the memory they need (`FLEDGE_BUILD_VMS` overrides it). Cache
//! volumes are locked per build, so one VM (the first) holds them all and the steps with
//! cache mounts run there.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

use anyhow::{Result, bail};

use super::guest::{CacheVolume, Guest, MEMORY_MIB, Volumes};
use crate::digest::Sha256Digest;
use crate::microvm::Machine;
use crate::store::Store;

pub struct Pool<'a> {
    store: &'a Store,
    /// Finds the kernel and accelerator when a step first needs a VM (a build without RUN
    /// steps needs neither); remembered after.
    find_machine: Box<dyn Fn() -> Result<Machine> + Sync + 'a>,
    machine: Mutex<Option<Machine>>,
    /// Every cache mount the build uses.
    caches: Vec<CacheVolume>,
    limit: usize,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    idle: Vec<(usize, Guest)>,
    /// VMs running (idle or lent out), and the number the next one gets.
    alive: usize,
    next: usize,
    /// The VM holding the cache volumes.
    caches_vm: Option<usize>,
}

/// A place among the running VMs. Dropped while still held (a failed boot, a failed step
/// whose VM is in an unknown state), it frees the place for another VM.
struct Place<'p, 'a> {
    pool: &'p Pool<'a>,
    number: usize,
    held: bool,
}

impl Drop for Place<'_, '_> {
    fn drop(&mut self) {
        if self.held {
            let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
            state.alive -= 1;
            if state.caches_vm == Some(self.number) {
                state.caches_vm = None;
            }
            self.pool.freed.notify_all();
        }
    }
}

/// A VM lent to one step. Given back with [`Pool::give_back`]; dropped instead, the VM is
/// stopped and its place freed.
pub struct Lease<'p, 'a> {
    // Field order: the guest (its VM) goes before its place is freed.
    guest: Guest,
    place: Place<'p, 'a>,
}

impl Lease<'_, '_> {
    pub fn guest(&mut self) -> &mut Guest {
        &mut self.guest
    }
}

/// How many build VMs may run at once: one per CPU, as memory allows.
fn limit() -> Result<usize> {
    if let Ok(value) = std::env::var("FLEDGE_BUILD_VMS") {
        return match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("FLEDGE_BUILD_VMS={value}: expected a number of VMs, at least 1"),
        };
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let available_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        })
        .map_or(u64::from(MEMORY_MIB), |kib| kib / 1024);
    let by_memory = (available_mib.saturating_sub(512) / u64::from(MEMORY_MIB)).max(1) as usize;
    Ok(cpus.min(by_memory))
}

impl<'a> Pool<'a> {
    pub fn new(
        store: &'a Store,
        find_machine: Box<dyn Fn() -> Result<Machine> + Sync + 'a>,
        caches: Vec<CacheVolume>,
    ) -> Result<Self> {
        Ok(Pool {
            store,
            find_machine,
            machine: Mutex::new(None),
            caches,
            limit: limit()?,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        })
    }

    fn machine(&self) -> Result<Machine> {
        let mut machine = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        if machine.is_none() {
            *machine = Some((self.find_machine)()?);
        }
        Ok(machine.clone().expect("set above"))
    }

    /// A VM for a step on `base`: an idle one (the one holding `base` if any), or a new one
    /// booted by `boot` (with `base` attached as a disk) when the limit allows, else the next
    /// one given back. Steps with cache mounts get the VM holding the cache volumes.
    pub fn take<'p>(
        &'p self,
        base: &[Sha256Digest],
        needs_caches: bool,
        boot: &dyn Fn(&Machine, Volumes, usize) -> Result<Guest>,
    ) -> Result<Lease<'p, 'a>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let caches_vm = state.caches_vm;
            let eligible = |n: usize| !needs_caches || caches_vm == Some(n);
            let pick = state
                .idle
                .iter()
                .position(|(n, guest)| eligible(*n) && base.last().is_some_and(|top| guest.holds(top)))
                .or_else(|| state.idle.iter().position(|(n, _)| eligible(*n)));
            if let Some(i) = pick {
                let (number, guest) = state.idle.swap_remove(i);
                return Ok(Lease { guest, place: Place { pool: self, number, held: true } });
            }
            if needs_caches && caches_vm.is_none() && state.alive == self.limit && !state.idle.is_empty() {
                // Make room for the VM that will hold the cache volumes.
                drop(state.idle.pop());
                state.alive -= 1;
                continue;
            }
            if state.alive < self.limit && (!needs_caches || caches_vm.is_none()) {
                let number = state.next;
                state.next += 1;
                state.alive += 1;
                let with_caches = caches_vm.is_none() && !self.caches.is_empty();
                if with_caches {
                    state.caches_vm = Some(number);
                }
                drop(state);
                let place = Place { pool: self, number, held: true };
                let machine = self.machine()?;
                let caches: &[CacheVolume] = if with_caches { &self.caches } else { &[] };
                let volumes = Volumes::prepare(self.store, base, &self.caches_dir(), caches)?;
                let guest = boot(&machine, volumes, number)?;
                return Ok(Lease { guest, place });
            }
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn caches_dir(&self) -> PathBuf {
        self.store.root().join("cache-mounts")
    }

    /// Returns a VM whose step finished, for the steps that follow.
    pub fn give_back(&self, lease: Lease<'_, 'a>) {
        let Lease { guest, mut place } = lease;
        place.held = false;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.idle.push((place.number, guest));
        self.freed.notify_all();
    }

    /// Powers every VM off.
    pub async fn shutdown(&self) -> Result<()> {
        let idle = std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).idle);
        for (_, guest) in idle {
            guest.shutdown().await?;
        }
        Ok(())
    }
}
