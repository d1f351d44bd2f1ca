//! Where lb itself runs, for the docker provider: the container lb is in (so
//! `pool.network = "@self"` puts members on lb's own network, whatever
//! Compose named it) and who lb is (so a refused Docker socket says which
//! group lb lacks). Only `/proc` is read: lb's image has nothing else.

use std::os::unix::fs::MetadataExt;

/// `pool.network` value for "the network of lb's own container".
pub const OWN_NETWORK: &str = "@self";

/// The container lb runs in, as the engine can look it up: its full id from
/// `/proc/self/mountinfo` (Docker bind-mounts `/etc/hostname`, `/etc/hosts`
/// and `/etc/resolv.conf` from `.../containers/<id>/`), else the hostname
/// (Docker's default hostname is the short id). `None` outside any container
/// is not detectable this way; the engine's lookup of the hostname fails then.
pub fn own_container() -> Option<String> {
    let from_mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| container_id_in_mountinfo(&m));
    from_mounts.or_else(|| {
        let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
        Some(h.trim().to_string()).filter(|h| !h.is_empty())
    })
}

/// The 64-hex-digit id in the source path of the bind mount on
/// `/etc/hostname`, `/etc/hosts` or `/etc/resolv.conf`.
fn container_id_in_mountinfo(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        // Fields: id, parent, major:minor, root (the source path within its
        // file system), mount point, ...
        let mut f = line.split(' ');
        let root = f.nth(3)?;
        let point = f.next()?;
        if !["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"].contains(&point) {
            return None;
        }
        let id = root.split("/containers/").nth(1)?.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// Why the unix socket at `path` refuses lb, for the error message: neither
/// lb's uid nor any of its groups owns it. `None` when that does not explain
/// a refusal (a missing socket is reported when connecting already).
pub fn socket_hint(path: &str) -> Option<String> {
    let md = std::fs::metadata(path).ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let (uid, groups) = ids_in_status(&status)?;
    if uid == 0 || uid == md.uid() || groups.contains(&md.gid()) {
        return None;
    }
    Some(format!(
        "{path} belongs to uid {} gid {} (mode {:o}) and lb runs as uid {uid} with groups \
         {groups:?}: give lb group {} (Compose: DOCKER_GID={} for deploy/pool, i.e. \
         `stat -c %g {path}` on the host)",
        md.uid(),
        md.gid(),
        md.mode() & 0o777,
        md.gid(),
        md.gid()
    ))
}

/// (real uid, primary and supplementary gids) from `/proc/self/status`.
fn ids_in_status(status: &str) -> Option<(u32, Vec<u32>)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().filter_map(|n| n.parse::<u32>().ok()))
    };
    let uid = field("Uid:")?.next()?;
    let mut groups: Vec<u32> = field("Gid:")?.take(1).collect();
    groups.extend(field("Groups:").into_iter().flatten());
    groups.dedup();
    Some((uid, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e8b1c2d9a0e7f6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";

    #[test]
    fn the_id_comes_from_the_hostname_bind_mount() {
        let m = format!(
            "1012 990 0:52 / / ro,relatime master:1 - overlay overlay rw,lowerdir=/x\n\
             1013 1012 0:55 / /proc rw,nosuid - proc proc rw\n\
             1020 1012 8:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n\
             1021 1012 8:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(container_id_in_mountinfo(&m).as_deref(), Some(ID));
        // /var/lib/docker on its own file system: the root is relative to it.
        let m = format!("30 20 8:2 /containers/{ID}/hosts /etc/hosts rw - xfs /dev/sdb rw\n");
        assert_eq!(container_id_in_mountinfo(&m).as_deref(), Some(ID));
    }

    #[test]
    fn other_mounts_and_short_ids_are_not_ids() {
        // A volume whose path happens to contain /containers/<64 hex>.
        let m = format!("40 20 8:1 /srv/containers/{ID}/data /data rw - ext4 /dev/sda1 rw\n");
        assert_eq!(container_id_in_mountinfo(&m), None);
        let m =
            "41 20 8:1 /var/lib/docker/containers/3f4e8b1c/hostname /etc/hostname rw - ext4 x rw\n";
        assert_eq!(container_id_in_mountinfo(m), None);
        assert_eq!(container_id_in_mountinfo("garbage\n\n"), None);
    }

    #[test]
    fn uid_and_groups_from_status() {
        let s = "Name:\tlb\nUid:\t65532\t65532\t65532\t65532\nGid:\t65532\t65532\t65532\t65532\n\
                 FDSize:\t64\nGroups:\t105 999 \n";
        assert_eq!(ids_in_status(s), Some((65532, vec![65532, 105, 999])));
        let s = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n";
        assert_eq!(ids_in_status(s), Some((0, vec![0])));
        assert_eq!(ids_in_status("Name:\tlb\n"), None);
    }
}
