//! Users: credentials, tags, templates, address lists and limits.

use std::collections::BTreeMap;

#[cfg(test)]
use serde::Serialize;
use serde_json::{json, Value};

use super::{Event, Outcome};
use crate::auth::{self, TagMap, Tags};
use crate::rpc::{self, RpcError, ERR_INVALID_USER, ERR_PERMISSION_DENIED, ERR_USER_EXISTS};

pub const ROOT_USER: &str = "root";
/// Session limit of a new user.
pub const DEFAULT_MAX_SESSIONS: i64 = 50;

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[cfg_attr(test, serde(rename_all = "camelCase"))]
pub struct User {
    /// PHC scrypt hash; never returned, never logged.
    pub pass_hash: String,
    pub tags: Tags,
    pub templates: Vec<String>,
    pub whitelist: Vec<String>,
    pub blacklist: Vec<String>,
    /// 0 = unlimited.
    pub maxsessions: i64,
    pub disabled: bool,
    pub created_at: String,
}

impl User {
    fn new(pass_hash: String, created_at: String) -> Self {
        User {
            pass_hash,
            tags: Tags::new(),
            templates: Vec::new(),
            whitelist: Vec::new(),
            blacklist: Vec::new(),
            maxsessions: DEFAULT_MAX_SESSIONS,
            disabled: false,
            created_at,
        }
    }

    /// The `user.list` view (no password hash).
    pub fn to_public(&self, name: &str) -> Value {
        json!({
            "user": name,
            "tags": self.tags,
            "templates": self.templates,
            "whitelist": self.whitelist,
            "blacklist": self.blacklist,
            "maxsessions": self.maxsessions,
            "disabled": self.disabled,
            "createdAt": self.created_at,
        })
    }
}

/// One change to an existing user.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[cfg_attr(test, serde(rename_all = "camelCase"))]
pub enum UserChange {
    SetTags { prefix: String, tags: TagMap },
    DelTags { prefix: String, tags: Vec<String> },
    SetPass { hash: String },
    AddTemplate { template: String },
    DelTemplate { template: String },
    AddWhitelist { ip: String },
    DelWhitelist { ip: String },
    AddBlacklist { ip: String },
    DelBlacklist { ip: String },
    SetMaxSessions { maxsessions: i64 },
    SetDisabled { disabled: bool },
}

impl UserChange {
    /// What a hook may tell about the change (never a password hash).
    pub fn hook_detail(&self) -> Option<Value> {
        Some(match self {
            UserChange::SetTags { prefix, tags } => json!({"prefix": prefix, "tags": tags}),
            UserChange::DelTags { prefix, tags } => json!({"prefix": prefix, "tags": tags}),
            UserChange::SetPass { .. } => return None,
            UserChange::AddTemplate { template } | UserChange::DelTemplate { template } => {
                json!({"template": template})
            }
            UserChange::AddWhitelist { ip }
            | UserChange::DelWhitelist { ip }
            | UserChange::AddBlacklist { ip }
            | UserChange::DelBlacklist { ip } => json!({"ip": ip}),
            UserChange::SetMaxSessions { maxsessions } => json!({"maxsessions": maxsessions}),
            UserChange::SetDisabled { disabled } => json!({"disabled": disabled}),
        })
    }

    /// The hook action name of this change.
    pub fn action(&self) -> &'static str {
        match self {
            UserChange::SetTags { .. } => "setTags",
            UserChange::DelTags { .. } => "delTags",
            UserChange::SetPass { .. } => "setPass",
            UserChange::AddTemplate { .. } => "addTemplate",
            UserChange::DelTemplate { .. } => "delTemplate",
            UserChange::AddWhitelist { .. } => "addWhitelist",
            UserChange::DelWhitelist { .. } => "delWhitelist",
            UserChange::AddBlacklist { .. } => "addBlacklist",
            UserChange::DelBlacklist { .. } => "delBlacklist",
            UserChange::SetMaxSessions { .. } => "setMaxSessions",
            UserChange::SetDisabled { .. } => "setDisabled",
        }
    }
}

fn add_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

#[derive(Debug, Default, Clone)]
#[cfg_attr(test, derive(Serialize))]
pub struct Users {
    pub(super) by_name: BTreeMap<String, User>,
}

impl Users {
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &User)> {
        self.by_name.iter()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The user's tags with its templates merged in (own tags win).
    pub fn effective_tags(&self, name: &str) -> Tags {
        let lookup = |n: &str| {
            self.by_name
                .get(n)
                .map(|u| (&u.tags, u.templates.as_slice()))
        };
        auth::with_templates(name, &lookup)
    }

    pub(super) fn bootstrap_root(&mut self, hash: String, at: String) {
        let mut root = User::new(hash, at);
        root.tags.insert(
            ".".to_string(),
            json!({"@admin": true})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        root.maxsessions = 0;
        self.by_name.insert(ROOT_USER.to_string(), root);
    }

    /// The cluster-wide part of the login checks; `sessions_of` counts the user's other
    /// sessions.
    pub(super) fn login_check(&self, name: &str, sessions_of: impl Fn(&str) -> usize) -> Outcome {
        let user = self
            .by_name
            .get(name)
            .ok_or_else(|| RpcError::detail(ERR_PERMISSION_DENIED, "unknown user"))?;
        if user.disabled {
            return Err(RpcError::detail(ERR_PERMISSION_DENIED, "user disabled"));
        }
        if user.maxsessions > 0 && sessions_of(name) as i64 >= user.maxsessions {
            return Err(RpcError::detail(ERR_PERMISSION_DENIED, "too many sessions"));
        }
        Ok(rpc::ok())
    }

    pub(super) fn create(
        &mut self,
        name: &str,
        hash: String,
        at: String,
        events: &mut Vec<Event>,
    ) -> Outcome {
        if self.by_name.contains_key(name) {
            return Err(RpcError::new(ERR_USER_EXISTS));
        }
        self.by_name.insert(name.to_string(), User::new(hash, at));
        events.push(Event::User {
            action: "create",
            user: name.to_string(),
        });
        Ok(rpc::ok())
    }

    pub(super) fn delete(&mut self, name: &str, events: &mut Vec<Event>) -> Outcome {
        if self.by_name.remove(name).is_none() {
            return Err(RpcError::new(ERR_INVALID_USER));
        }
        events.push(Event::User {
            action: "delete",
            user: name.to_string(),
        });
        Ok(rpc::ok())
    }

    /// Atomic: applied as one command, so no reader sees both or neither name.
    pub(super) fn rename(&mut self, name: &str, new: &str, events: &mut Vec<Event>) -> Outcome {
        if !self.by_name.contains_key(name) {
            return Err(RpcError::new(ERR_INVALID_USER));
        }
        if self.by_name.contains_key(new) {
            return Err(RpcError::new(ERR_USER_EXISTS));
        }
        if let Some(user) = self.by_name.remove(name) {
            self.by_name.insert(new.to_string(), user);
        }
        events.push(Event::User {
            action: "rename",
            user: new.to_string(),
        });
        Ok(rpc::ok())
    }

    pub(super) fn update(
        &mut self,
        name: &str,
        change: UserChange,
        events: &mut Vec<Event>,
    ) -> Outcome {
        let user = self
            .by_name
            .get_mut(name)
            .ok_or_else(|| RpcError::new(ERR_INVALID_USER))?;
        let action = change.action();
        match change {
            UserChange::SetTags { prefix, tags } => {
                user.tags.entry(prefix).or_default().extend(tags);
            }
            UserChange::DelTags { prefix, tags } => {
                if let Some(map) = user.tags.get_mut(&prefix) {
                    for tag in &tags {
                        map.remove(tag);
                    }
                    if map.is_empty() {
                        user.tags.remove(&prefix);
                    }
                }
            }
            UserChange::SetPass { hash } => user.pass_hash = hash,
            UserChange::AddTemplate { template } => add_unique(&mut user.templates, template),
            UserChange::DelTemplate { template } => user.templates.retain(|t| *t != template),
            UserChange::AddWhitelist { ip } => add_unique(&mut user.whitelist, ip),
            UserChange::DelWhitelist { ip } => user.whitelist.retain(|t| *t != ip),
            UserChange::AddBlacklist { ip } => add_unique(&mut user.blacklist, ip),
            UserChange::DelBlacklist { ip } => user.blacklist.retain(|t| *t != ip),
            UserChange::SetMaxSessions { maxsessions } => user.maxsessions = maxsessions.max(0),
            UserChange::SetDisabled { disabled } => user.disabled = disabled,
        }
        events.push(Event::User {
            action,
            user: name.to_string(),
        });
        Ok(rpc::ok())
    }
}
