//! Backends that resolve to many addresses (`resolve = "all"`, SPEC "Backends
//! that resolve to many addresses"): the [`Group`] such an entry becomes, its
//! members' names, and the [`layout`] of a snapshot's backend list under the
//! 64-backend cap.
//!
//! A member is an ordinary [`Backend`] named `<group>@<ip>:<port>` whose stats
//! are created when its address first appears and kept, by address, for as long
//! as DNS keeps answering with it (and across reloads that keep the group):
//! health, circuit, EWMA, in-flight and counters never reset on a re-resolution.
//! An address that disappears takes its member out of the next snapshot; its
//! in-flight requests finish on the snapshot they hold.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::backend::{Backend, BackendStats, Mode};
use crate::config::{BackendConfig, MAX_BACKENDS};

/// A `resolve = "all"` entry: what its members share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The entry's name (members are `<name>@<ip>:<port>`).
    pub name: Arc<str>,
    /// `host:port` as configured.
    pub configured_addr: String,
    /// The group's operator weight: new members start with it.
    pub weight: u32,
    /// The weight the config file gave.
    pub config_weight: u32,
    /// The group's operator mode: new members start in it.
    pub mode: Mode,
    /// Each member's `max_in_flight`.
    pub max_in_flight: u32,
    /// Members speak h2c (`protocol = "h2c"`).
    pub h2c: bool,
    /// The last good answer, sorted and without duplicates; members are laid
    /// out from it (all of them, unless the cap drops the last ones).
    pub addrs: Vec<SocketAddr>,
}

/// A member's name: `app@10.0.0.5:3000`, `app@[fd00::5]:3000`.
pub fn member_name(group: &str, addr: SocketAddr) -> String {
    format!("{group}@{addr}")
}

impl Group {
    /// The group for config entry `bc`; a literal `ip:port` is its one address.
    pub fn from_config(bc: &BackendConfig) -> Group {
        Group {
            name: bc.name.as_str().into(),
            configured_addr: bc.addr.clone(),
            weight: bc.weight,
            config_weight: bc.weight,
            mode: Mode::Active,
            max_in_flight: bc.max_in_flight,
            h2c: bc.protocol == crate::config::Protocol::H2c,
            addrs: bc.addr.parse().into_iter().collect(),
        }
    }

    /// A new member at `addr`, starting with the group's weight and mode.
    pub fn member(&self, addr: SocketAddr) -> Backend {
        Backend {
            addr: Some(addr),
            configured_addr: self.configured_addr.clone(),
            weight: self.weight,
            config_weight: self.config_weight,
            mode: self.mode,
            max_in_flight: self.max_in_flight,
            group: Some(self.name.clone()),
            stats: Arc::new(BackendStats::new(&member_name(&self.name, addr))),
            pool: false,
            h2c: self.h2c,
        }
    }

    /// The members for the group's addresses, in address order: the member
    /// already at an address (in `existing`) is kept as it is; a new address
    /// gets a new member.
    pub fn members(&self, existing: &[Backend]) -> Vec<Backend> {
        self.addrs
            .iter()
            .map(|&a| {
                existing
                    .iter()
                    .find(|b| b.group.as_deref() == Some(&*self.name) && b.addr == Some(a))
                    .cloned()
                    .unwrap_or_else(|| self.member(a))
            })
            .collect()
    }
}

/// Sorts and deduplicates a DNS answer (the stable order of members and of
/// the cap).
pub fn normalize(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs.dedup();
    addrs
}

/// One config entry's backends, before the cap.
pub enum Entry {
    /// A `resolve = "one"` backend.
    Plain(Backend),
    /// A group's members, in address order.
    Group(Vec<Backend>),
}

/// A group that has more addresses than fit under the cap
/// ([`crate::state::Snapshot::capped`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped {
    /// The group.
    pub group: Arc<str>,
    /// Members kept (its lowest addresses).
    pub kept: usize,
    /// Addresses left out.
    pub dropped: usize,
}

/// Concatenates entries in config order, at most [`MAX_BACKENDS`] backends in
/// all: plain backends always fit (the config has at most that many entries);
/// groups share the rest in config order, each keeping its lowest addresses.
pub fn layout(entries: Vec<Entry>) -> Vec<Backend> {
    let plain = entries
        .iter()
        .filter(|e| matches!(e, Entry::Plain(_)))
        .count();
    let mut room = MAX_BACKENDS.saturating_sub(plain);
    let mut out = Vec::new();
    for e in entries {
        match e {
            Entry::Plain(b) => out.push(b),
            Entry::Group(mut members) => {
                members.truncate(room);
                room -= members.len();
                out.extend(members);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resolve;

    fn group(addrs: &[&str]) -> Group {
        let bc = BackendConfig {
            name: "app".into(),
            addr: "app.test:3000".into(),
            weight: 10,
            max_in_flight: 5,
            resolve: Resolve::All,
            protocol: crate::config::Protocol::Http1,
        };
        Group {
            addrs: normalize(addrs.iter().map(|a| a.parse().unwrap()).collect()),
            ..Group::from_config(&bc)
        }
    }

    fn names(bs: &[Backend]) -> Vec<String> {
        bs.iter().map(|b| b.stats.name.to_string()).collect()
    }

    #[test]
    fn members_are_named_by_address_in_address_order() {
        let g = group(&[
            "10.0.0.9:3000",
            "[fd00::1]:3000",
            "10.0.0.10:3000",
            "10.0.0.9:3000",
        ]);
        let m = g.members(&[]);
        assert_eq!(
            names(&m),
            [
                "app@10.0.0.9:3000",
                "app@10.0.0.10:3000",
                "app@[fd00::1]:3000"
            ]
        );
        assert!(m.iter().all(|b| b.weight == 10
            && b.max_in_flight == 5
            && b.group.as_deref() == Some("app")
            && b.configured_addr == "app.test:3000"));
    }

    #[test]
    fn a_re_resolution_keeps_members_by_address() {
        let g = group(&["10.0.0.1:3000", "10.0.0.2:3000"]);
        let mut first = g.members(&[]);
        first[1].weight = 3; // an operator's change to one member
        first[1]
            .stats
            .requests_total
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        let g2 = group(&["10.0.0.2:3000", "10.0.0.3:3000"]);
        let second = g2.members(&first);
        assert_eq!(names(&second), ["app@10.0.0.2:3000", "app@10.0.0.3:3000"]);
        assert!(Arc::ptr_eq(&second[0].stats, &first[1].stats), "same stats");
        assert_eq!(second[0].weight, 3);
        assert_eq!(second[1].weight, 10, "a new member gets the group's weight");
        assert_eq!(
            second[1]
                .stats
                .requests_total
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn the_cap_keeps_plain_backends_and_the_first_members_in_order() {
        let plain = |n: &str| {
            let mut b = group(&["10.9.9.9:1"]).members(&[]).remove(0);
            b.group = None;
            b.stats = Arc::new(BackendStats::new(n));
            b
        };
        let many: Vec<String> = (1..=70)
            .map(|i| format!("10.0.{}.{}:3000", i / 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let g = group(&many);
        let entries = vec![
            Entry::Plain(plain("a")),
            Entry::Group(g.members(&[])),
            Entry::Plain(plain("b")),
        ];
        let out = layout(entries);
        assert_eq!(out.len(), MAX_BACKENDS, "62 of 70 members fit");
        assert_eq!(&*out[0].stats.name, "a");
        assert_eq!(&*out[1].stats.name, "app@10.0.0.1:3000");
        assert_eq!(&*out[62].stats.name, "app@10.0.0.62:3000");
        assert_eq!(&*out[63].stats.name, "b");
        // Under the cap nothing is dropped.
        let out = layout(vec![Entry::Group(g.members(&[])[..10].to_vec())]);
        assert_eq!(out.len(), 10);
    }
}
