//! `USER` strings resolved the way container runtimes do, against the process root's
//! `/etc/passwd` and `/etc/group`: `name`, `uid`, `name:group`, `uid:gid` (either side a
//! name or a number). A numeric id needs no entry; a name must have one.

use std::path::Path;

#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: those listing the user as a member (only when no group was
    /// given explicitly).
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
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let users = passwd(root);
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
    let home = entry.map_or_else(|| "/".to_string(), |e| e.home.clone());
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
    fn names_and_numbers_resolve_like_container_runtimes() {
        let dir = root();
        let r = |spec| resolve(dir.path(), spec);
        assert_eq!(r("").unwrap(), Identity { uid: 0, gid: 0, groups: vec![], home: "/root".into() });
        assert_eq!(
            r("alice").unwrap(),
            Identity { uid: 1000, gid: 1000, groups: vec![10], home: "/home/alice".into() }
        );
        assert_eq!(r("1000").unwrap().groups, vec![10]);
        assert_eq!(
            r("alice:wheel").unwrap(),
            Identity { uid: 1000, gid: 10, groups: vec![], home: "/home/alice".into() }
        );
        assert_eq!(r("4242:77").unwrap(), Identity { uid: 4242, gid: 77, groups: vec![], home: "/".into() });
        assert_eq!(r("4242").unwrap().gid, 0);
        assert!(r("nobody").unwrap_err().contains("unable to find user nobody"));
        assert!(r("alice:staff").unwrap_err().contains("unable to find group staff"));
    }
}
