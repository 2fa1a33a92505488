//! `USER` strings resolved as BuildKit does (executor/oci/user.go over moby/sys/user), against
//! the process root's `/etc/passwd` and `/etc/group`: `name`, `uid`, `name:group`, `uid:gid`
//! (either side a name or a number). A numeric id needs no entry; a name must have one.

use std::path::Path;

#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups as the process gets them: the primary gid first (unless listed),
    /// then the groups listing the user as a member (only when no group was given).
    pub groups: Vec<u32>,
    /// The passwd entry's home directory, `/` without one.
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read(root: &Path, file: &str) -> String {
    std::fs::read_to_string(root.join(file)).unwrap_or_default()
}

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    read(root, "etc/passwd")
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 6).then_some(())?;
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn groups(root: &Path) -> Vec<GroupEntry> {
    read(root, "etc/group")
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 3).then_some(())?;
            let members = f.get(3).map_or("", |m| m);
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: members.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
            })
        })
        .collect()
}

/// Resolves `spec` ("" is root) inside `root`.
pub fn resolve(root: &Path, spec: &str) -> Result<Identity, String> {
    let mut identity = lookup(root, spec)?;
    // BuildKit puts the primary gid in front of the supplementary groups unless they hold it
    // (ensureAdditionalGids), so /proc/self/status lists it even for `USER uid:gid`.
    if !identity.groups.contains(&identity.gid) {
        identity.groups.insert(0, identity.gid);
    }
    Ok(identity)
}

/// A side of `uid:gid` as BuildKit's fast path reads it: a number, or `root` for 0.
fn numeric_id(word: &str) -> Option<u32> {
    if word == "root" { Some(0) } else { word.parse().ok() }
}

/// The identity `spec` names, its groups only those listing the user.
fn lookup(root: &Path, spec: &str) -> Result<Identity, String> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let users = passwd(root);
    let home_of = |entry: Option<&PasswdEntry>| entry.map_or_else(|| "/".to_string(), |e| e.home.clone());
    // BuildKit takes `uid:gid` (`root` standing for 0 on either side) as given, without
    // looking either up (ParseUIDGID); the home is still the passwd entry's, as runc's.
    if let (Some(uid), Some(gid)) = (numeric_id(user), group.and_then(numeric_id)) {
        let home = home_of(users.iter().find(|e| e.uid == uid));
        return Ok(Identity { uid, gid, groups: Vec::new(), home });
    }
    let user = if user.is_empty() { "0" } else { user };
    let entry = match user.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid),
        Err(_) => Some(
            users
                .iter()
                .find(|e| e.name == user)
                .ok_or_else(|| format!("unable to find user {user}: no matching entries in passwd file"))?,
        ),
    };
    let uid = user.parse().unwrap_or_else(|_| entry.map_or(0, |e| e.uid));
    let home = home_of(entry);
    let all_groups = groups(root);
    let (gid, groups) = match group {
        Some(group) => (group_id(&all_groups, group)?, Vec::new()),
        None => {
            let name = entry.map(|e| e.name.as_str());
            let member_of = all_groups.iter().filter(|g| name.is_some_and(|n| g.members.iter().any(|m| m == n)));
            (entry.map_or(0, |e| e.gid), member_of.map(|g| g.gid).collect())
        }
    };
    Ok(Identity { uid, gid, groups, home })
}

fn group_id(groups: &[GroupEntry], group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    groups
        .iter()
        .find(|g| g.name == group)
        .map(|g| g.gid)
        .ok_or_else(|| format!("unable to find group {group}: no matching entries in group file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken line\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\nbad\n").unwrap();
        dir
    }

    #[test]
    fn names_and_numbers_resolve_like_buildkit() {
        let dir = root();
        let r = |spec| resolve(dir.path(), spec);
        assert_eq!(r("").unwrap(), Identity { uid: 0, gid: 0, groups: vec![0], home: "/root".into() });
        assert_eq!(
            r("alice").unwrap(),
            Identity { uid: 1000, gid: 1000, groups: vec![1000, 10], home: "/home/alice".into() }
        );
        assert_eq!(r("1000").unwrap().groups, vec![1000, 10]);
        assert_eq!(
            r("alice:wheel").unwrap(),
            Identity { uid: 1000, gid: 10, groups: vec![10], home: "/home/alice".into() }
        );
        assert_eq!(r("4242:77").unwrap(), Identity { uid: 4242, gid: 77, groups: vec![77], home: "/".into() });
        assert_eq!(r("4242").unwrap().gid, 0);
        // uid:gid is taken as given: no supplementary groups, though alice is in wheel.
        assert_eq!(r("1000:1000").unwrap().groups, vec![1000]);
        assert!(r("nobody").unwrap_err().contains("unable to find user nobody"));
        assert!(r("alice:staff").unwrap_err().contains("unable to find group staff"));
    }

    #[test]
    fn root_as_a_side_of_uid_gid_needs_no_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let r = |spec| resolve(dir.path(), spec);
        assert_eq!(r("root:5").unwrap(), Identity { uid: 0, gid: 5, groups: vec![5], home: "/".into() });
        assert_eq!(r("7:root").unwrap().gid, 0);
        assert!(r("root").unwrap_err().contains("unable to find user root"));
    }
}
