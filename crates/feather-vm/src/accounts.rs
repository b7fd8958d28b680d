//! A VM's users and groups, read from its own `/etc/passwd` and `/etc/group`.
//!
//! feather reads these files itself rather than asking NSS: every process entering a VM would
//! otherwise load NSS modules and try the nscd and systemd-userdb sockets, which costs
//! milliseconds per start, and a VM's accounts are exactly what its files say.

use std::fs;
use std::path::PathBuf;

/// A user name the VM's `/etc/passwd` does not have.
#[derive(Debug, thiserror::Error)]
#[error("user {user:?} does not exist in the VM's /etc/passwd")]
pub struct UnknownUser {
    pub user: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Account {
    fn root() -> Account {
        Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
        }
    }
}

/// The account named `user` (a name, or a numeric uid) in the calling process's `/etc/passwd`.
/// A uid that has no entry is still a valid identity (uid = gid = it, home `/`), as in Docker;
/// an unknown name is an error.
pub fn lookup(user: Option<&str>) -> Result<Account, UnknownUser> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    match user {
        None => Ok(find_user(&passwd, "root").unwrap_or_else(Account::root)),
        Some(user) => match (find_user(&passwd, user), user.parse::<u32>()) {
            (Some(account), _) => Ok(account),
            (None, Ok(id)) => Ok(Account {
                name: user.to_owned(),
                uid: id,
                gid: id,
                home: "/".into(),
            }),
            (None, Err(_)) => Err(UnknownUser {
                user: user.to_owned(),
            }),
        },
    }
}

/// The account with this name or numeric uid in passwd(5) text.
fn find_user(passwd: &str, user: &str) -> Option<Account> {
    passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|a| a.name == user || a.uid.to_string() == user)
}

fn parse_passwd_line(line: &str) -> Option<Account> {
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 || fields[0].starts_with('#') {
        return None;
    }
    Some(Account {
        name: fields[0].into(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: fields[5].into(),
    })
}

/// The account's groups: its primary group and every group of `/etc/group` listing it.
pub fn groups(account: &Account) -> Vec<u32> {
    groups_in(
        &fs::read_to_string("/etc/group").unwrap_or_default(),
        account,
    )
}

fn groups_in(group: &str, account: &Account) -> Vec<u32> {
    let mut gids = vec![account.gid];
    for line in group.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let [_, _, gid, members] = fields[..] else {
            continue;
        };
        let Ok(gid) = gid.parse::<u32>() else {
            continue;
        };
        if members.split(',').any(|m| m == account.name) && !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    gids
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken line\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n";
    const GROUP: &str =
        "root:x:0:\nadm:x:4:syslog,www-data\nwww-data:x:33:\nweb:x:1000:www-data\nbad\n";

    #[test]
    fn finds_users_by_name_or_uid() {
        let www = find_user(PASSWD, "www-data").unwrap();
        assert_eq!(
            (www.uid, www.gid, www.home.to_str().unwrap()),
            (33, 33, "/var/www")
        );
        assert_eq!(find_user(PASSWD, "33").unwrap().name, "www-data");
        assert_eq!(find_user(PASSWD, "nobody"), None);
    }

    #[test]
    fn collects_primary_and_listed_groups() {
        let www = find_user(PASSWD, "www-data").unwrap();
        assert_eq!(groups_in(GROUP, &www), [33, 4, 1000]);
        assert_eq!(groups_in(GROUP, &Account::root()), [0]);
    }
}
