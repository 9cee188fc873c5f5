//! `user.*`: accounts, tags, templates, address lists and limits.

use std::rc::Rc;

use serde_json::{json, Value};

use crate::conn::Conn;
use crate::logins::Logins;
use crate::node::now_rfc3339;
use crate::replica::Replica;
use nexus_core::auth;
use nexus_core::listing::ListQuery;
use nexus_core::names::{normalize_path, normalize_prefix};
use nexus_core::rpc::{Params, RpcError, RpcResult, ERR_METHOD_NOT_FOUND};
use nexus_core::state::{Command, UserChange};

const NAME_LEN: std::ops::RangeInclusive<usize> = 3..=500;
const PASS_LEN: std::ops::RangeInclusive<usize> = 4..=500;

pub async fn call(
    replica: &Replica,
    logins: &Logins,
    conn: &Rc<Conn>,
    name: &str,
    p: &Params<'_>,
) -> RpcResult {
    let method = format!("user.{name}");
    let require = |path: &str| conn.require(path, &method);
    match name {
        "create" => {
            let user = user_name(p, "user")?;
            let pass = password(p)?;
            require(&user)?;
            let hash = logins.hashing(move || auth::hash_password(&pass)).await?;
            replica
                .propose(Command::UserCreate {
                    user,
                    hash,
                    at: now_rfc3339(),
                    actor: conn.user(),
                })
                .await
        }
        "delete" => {
            let user = existing_name(p, "user")?;
            require(&user)?;
            replica
                .propose(Command::UserDelete {
                    user,
                    actor: conn.user(),
                })
                .await
        }
        "rename" => {
            let user = existing_name(p, "user")?;
            let new = user_name(p, "new")?;
            require(&user)?;
            require(&new)?;
            replica
                .propose(Command::UserRename {
                    user,
                    new,
                    actor: conn.user(),
                })
                .await
        }
        "list" => {
            let q = ListQuery::from_params(p)?;
            require(q.permission_path())?;
            Ok(replica
                .read_linear(|s| {
                    Value::Array(
                        q.select(s.users.iter().map(|(n, u)| (n.as_str(), u.to_public(n)))),
                    )
                })
                .await?)
        }
        "count" => {
            let q = ListQuery::from_params(p)?;
            require(q.permission_path())?;
            Ok(replica.read_linear(|s| q.count(s.users.names())).await?)
        }
        "setTags" => {
            let user = existing_name(p, "user")?;
            let prefix = tag_prefix(p)?;
            let tags = p.object("tags")?.clone();
            require(&prefix)?;
            update(replica, conn, user, UserChange::SetTags { prefix, tags }).await
        }
        "delTags" => {
            let user = existing_name(p, "user")?;
            let prefix = tag_prefix(p)?;
            let tags = p.strings("tags")?;
            require(&prefix)?;
            update(replica, conn, user, UserChange::DelTags { prefix, tags }).await
        }
        "getTags" => {
            let user = existing_name(p, "user")?;
            if user != conn.user() {
                require(&user)?;
            }
            // By prefix, with the templates' tags merged in (the user's own win).
            let tags = replica
                .read_linear(|s| {
                    s.users
                        .get(&user)
                        .map(|_| json!(s.users.effective_tags(&user)))
                })
                .await?
                .ok_or_else(|| RpcError::invalid_params("user"))?;
            Ok(json!({"tags": tags}))
        }
        "getEffectiveTags" => {
            let user = existing_name(p, "user")?;
            let prefix = tag_prefix(p)?;
            if user != conn.user() {
                require(&user)?;
            }
            let tags = replica
                .read_linear(|s| {
                    s.users
                        .get(&user)
                        .map(|_| auth::tags_at(&s.users.effective_tags(&user), &prefix))
                })
                .await?;
            let tags = tags.ok_or_else(|| RpcError::invalid_params("user"))?;
            Ok(json!({"tags": tags}))
        }
        "setPass" => {
            let user = existing_name(p, "user")?;
            let pass = password(p)?;
            let own_allowed = user == conn.user()
                && auth::tags_at(&conn.auth.borrow().tags, &user).get("@user.setPass")
                    != Some(&Value::Bool(false));
            if !own_allowed {
                require(&user)?;
            }
            let hash = logins.hashing(move || auth::hash_password(&pass)).await?;
            update(replica, conn, user, UserChange::SetPass { hash }).await
        }
        "addTemplate" | "delTemplate" => {
            let user = existing_name(p, "user")?;
            let template = existing_name(p, "template")?;
            require(&user)?;
            conn.require(&template, "user.useTemplate")?;
            let change = if name == "addTemplate" {
                UserChange::AddTemplate { template }
            } else {
                UserChange::DelTemplate { template }
            };
            update(replica, conn, user, change).await
        }
        "addWhitelist" | "delWhitelist" | "addBlacklist" | "delBlacklist" => {
            let user = existing_name(p, "user")?;
            let ip = p.str("ip")?.to_string();
            if regex::Regex::new(&ip).is_err() {
                return Err(RpcError::invalid_param_because("ip", "invalid regexp"));
            }
            require(&user)?;
            let change = match name {
                "addWhitelist" => UserChange::AddWhitelist { ip },
                "delWhitelist" => UserChange::DelWhitelist { ip },
                "addBlacklist" => UserChange::AddBlacklist { ip },
                _ => UserChange::DelBlacklist { ip },
            };
            update(replica, conn, user, change).await
        }
        "setMaxSessions" => {
            let user = existing_name(p, "user")?;
            let maxsessions = p.i64("maxsessions")?;
            require(&user)?;
            update(
                replica,
                conn,
                user,
                UserChange::SetMaxSessions { maxsessions },
            )
            .await
        }
        "setDisabled" => {
            let user = existing_name(p, "user")?;
            let disabled = p.bool("disabled")?;
            require(&user)?;
            update(replica, conn, user, UserChange::SetDisabled { disabled }).await
        }
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}

async fn update(replica: &Replica, conn: &Conn, user: String, change: UserChange) -> RpcResult {
    let actor = conn.user();
    replica
        .propose(Command::UserUpdate {
            user,
            change,
            actor,
        })
        .await
}

/// A new user name: a valid label path of 3..500 chars, not `nobody`.
fn user_name(p: &Params, field: &str) -> Result<String, RpcError> {
    let raw = p.str(field)?;
    if !NAME_LEN.contains(&raw.chars().count()) {
        return Err(RpcError::invalid_param_because(
            field,
            "3 to 500 characters",
        ));
    }
    let name = normalize_path(raw)
        .ok_or_else(|| RpcError::invalid_param_because(field, "invalid name"))?;
    // `nobody` is what every unauthenticated connection is; no account may take the name.
    if name == crate::conn::NOBODY {
        return Err(RpcError::invalid_param_because(
            field,
            format!("{name} is reserved"),
        ));
    }
    Ok(name)
}

/// The name of a user that should exist (validity only; existence is checked in apply).
fn existing_name(p: &Params, field: &str) -> Result<String, RpcError> {
    normalize_path(p.str(field)?).ok_or_else(|| RpcError::invalid_params(field))
}

fn password(p: &Params) -> Result<String, RpcError> {
    let pass = p.str("pass")?;
    if !PASS_LEN.contains(&pass.chars().count()) {
        return Err(RpcError::invalid_param_because(
            "pass",
            "4 to 500 characters",
        ));
    }
    Ok(pass.to_string())
}

fn tag_prefix(p: &Params) -> Result<String, RpcError> {
    normalize_prefix(p.str("prefix")?).ok_or_else(|| RpcError::invalid_params("prefix"))
}
