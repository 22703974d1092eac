//! The directory admin API on the edge's admin listener: accounts' tunnels, VPC Services,
//! VPC Networks, bindings and API tokens, with the paths, bodies and envelope of the public
//! API where it has them (`/accounts/{account_id}/connectivity/directory/services`, …).
//!
//! Every request is decided in this order, and every decision is logged (token id, action,
//! object, allowed or not):
//!
//! 1. an unknown path → 404;
//! 2. no `Authorization: Bearer` token, or one the edge does not know → 401;
//! 3. the path's account (id or name) is not the token's → 404, as for any object of another
//!    account: nothing tells a token what exists elsewhere;
//! 4. the token's role does not allow the action → 403, naming the role needed;
//! 5. the object does not exist in the account → 404; a bad body → 400 naming the fields; a
//!    name taken or an object still in use → 409.
//!
//! Roles: **read** lists and reads everything but secrets; **bind** also creates and deletes
//! bindings to services and to networks (by network id); **admin** does everything, including
//! binding directly to a tunnel id, tunnels, their tokens and API tokens.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::Method;
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::{json, Value};
use tracing::info;
use underpass_rt::admin::{ApiRequest, ApiResponse};

use super::directory::{served_name, tunnel_of, TunnelBody};
use super::schema::{
    self, envelope_error, envelope_field_errors, envelope_list, envelope_ok, format_id, parse_id,
    BindingBody, BindingSpec, BindingTargetSpec, FieldError, NetworkBody, NetworkSpec, Role,
    ServiceBody, ServiceSpec, TokenBody, TunnelBody as TunnelCreateBody,
};
use crate::db::{self, Account, ApiToken, DbError, DirectoryBackend, Id, Kind, Record};
use crate::model::Tunnel;

/// The path every account's resources live under.
pub(crate) const ACCOUNTS_PREFIX: &str = "/accounts/";
/// Items per page when a list does not ask (`?per_page=`).
const DEFAULT_PER_PAGE: u32 = 50;
/// The most items one page holds.
const MAX_PER_PAGE: u32 = 1000;

/// Envelope error codes: those of [`schema`], plus 405.
mod code {
    pub(super) use super::schema::{
        CODE_CONFLICT as CONFLICT, CODE_FORBIDDEN as FORBIDDEN, CODE_INTERNAL as INTERNAL,
        CODE_NOT_FOUND as NOT_FOUND, CODE_UNAUTHENTICATED as UNAUTHENTICATED,
    };
    /// The method is not one the path takes.
    pub(super) const METHOD: u32 = 1007;
}

/// What the API needs of the running edge.
pub(crate) trait EdgeSide: Send + Sync + 'static {
    /// Serve the database's current objects: publish the directory, start and stop binding
    /// listeners, close the connections of deleted tunnels. An error changed nothing.
    fn apply(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
    /// Where the binding served as `name` listens now.
    fn binding_addr(&self, name: &str) -> Option<SocketAddr>;
    /// The token a connector of `tunnel` runs with.
    fn connector_token(&self, tunnel: &Tunnel) -> String;
}

/// The API: the database and the edge it changes.
pub(crate) struct Api {
    backend: Arc<dyn DirectoryBackend>,
    edge: Arc<dyn EdgeSide>,
    /// One write at a time, so that "store, then apply, undo on failure" is not interleaved.
    writes: tokio::sync::Mutex<()>,
}

/// One API failure, as the envelope and status it is answered with.
struct Refusal {
    status: u16,
    body: Value,
}

impl Refusal {
    fn new(status: u16, code: u32, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            body: envelope_error(code, &message.into()),
        }
    }

    fn fields(errors: &[FieldError]) -> Refusal {
        Refusal {
            status: 400,
            body: envelope_field_errors(errors),
        }
    }

    fn field(field: &str, message: impl Into<String>) -> Refusal {
        Refusal::fields(&[FieldError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    fn not_found(what: impl fmt::Display) -> Refusal {
        Refusal::new(404, code::NOT_FOUND, format!("{what} not found"))
    }

    fn internal(error: impl fmt::Display) -> Refusal {
        Refusal::new(500, code::INTERNAL, error.to_string())
    }
}

impl From<DbError> for Refusal {
    fn from(error: DbError) -> Refusal {
        match error {
            DbError::NameTaken { .. } => Refusal::new(409, code::CONFLICT, error.to_string()),
            other => Refusal::internal(other),
        }
    }
}

type Answer = Result<(u16, Value), Refusal>;

/// The collection a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Services,
    Networks,
    Bindings,
    Tunnels,
    Tokens,
}

impl Collection {
    fn kind(self) -> Option<Kind> {
        match self {
            Collection::Services => Some(Kind::Service),
            Collection::Networks => Some(Kind::Network),
            Collection::Bindings => Some(Kind::Binding),
            Collection::Tunnels => Some(Kind::Tunnel),
            Collection::Tokens => None,
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Collection::Services => "service",
            Collection::Networks => "network",
            Collection::Bindings => "binding",
            Collection::Tunnels => "tunnel",
            Collection::Tokens => "token",
        }
    }
}

/// A parsed API path.
#[derive(Debug)]
struct Route<'a> {
    account: &'a str,
    collection: Collection,
    id: Option<&'a str>,
    /// `/tunnels/{id}/token`.
    token: bool,
}

fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix(ACCOUNTS_PREFIX)?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let (account, tail) = parts.split_first()?;
    if account.is_empty() {
        return None;
    }
    let (collection, tail) = match tail {
        ["connectivity", "directory", "services", tail @ ..] => (Collection::Services, tail),
        ["connectivity", "directory", "networks", tail @ ..] => (Collection::Networks, tail),
        ["connectivity", "directory", "bindings", tail @ ..] => (Collection::Bindings, tail),
        ["connectivity", "tunnels", tail @ ..] => (Collection::Tunnels, tail),
        ["tokens", tail @ ..] => (Collection::Tokens, tail),
        _ => return None,
    };
    let (id, token) = match tail {
        [] => (None, false),
        [id] if !id.is_empty() => (Some(*id), false),
        [id, "token"] if collection == Collection::Tunnels && !id.is_empty() => (Some(*id), true),
        _ => return None,
    };
    Some(Route {
        account,
        collection,
        id,
        token,
    })
}

/// What a request does, for the role check and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    List,
    Get,
    Create,
    Replace,
    Delete,
    TunnelToken,
}

impl Action {
    fn of(method: &Method, has_id: bool, token: bool) -> Option<Action> {
        Some(match (method.as_str(), has_id, token) {
            ("GET", false, false) => Action::List,
            ("GET", true, false) => Action::Get,
            ("GET", true, true) => Action::TunnelToken,
            ("POST", false, false) => Action::Create,
            ("PUT", true, false) => Action::Replace,
            ("DELETE", true, false) => Action::Delete,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Action::List => "list",
            Action::Get => "get",
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Delete => "delete",
            Action::TunnelToken => "token",
        }
    }
}

fn role_of(token: &ApiToken) -> Role {
    token.role.parse().unwrap_or(Role::Read)
}

impl Api {
    pub(crate) fn new(backend: Arc<dyn DirectoryBackend>, edge: Arc<dyn EdgeSide>) -> Api {
        Api {
            backend,
            edge,
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// Answer one API request.
    pub(crate) async fn handle(&self, request: ApiRequest) -> ApiResponse {
        match self.decide(&request).await {
            Ok(answer) => answer,
            Err(refusal) => (refusal.status, refusal.body),
        }
    }

    async fn decide(&self, request: &ApiRequest) -> Answer {
        let Some(route) = route(&request.path) else {
            return Err(Refusal::new(
                404,
                code::NOT_FOUND,
                format!("no such endpoint: {} {}", request.method, request.path),
            ));
        };
        let Some(action) = Action::of(&request.method, route.id.is_some(), route.token) else {
            return Err(Refusal::new(
                405,
                code::METHOD,
                format!("{} is not allowed on {}", request.method, request.path),
            ));
        };
        let token = self.authenticate(request)?;
        let account = self.account_of(&token, route.account)?;
        let object = format!(
            "{}{}",
            route.collection.singular(),
            route.id.map(|id| format!(" {id}")).unwrap_or_default()
        );
        let log = Decision {
            token: &token,
            account: &account,
            action,
            collection: route.collection,
            object: &object,
        };
        let needed = match (route.collection, action) {
            (_, Action::List | Action::Get) if route.collection != Collection::Tokens => Role::Read,
            (Collection::Bindings, Action::Create) => self.binding_create_role(request),
            (Collection::Bindings, Action::Delete) => {
                self.binding_delete_role(&account, route.id)?
            }
            _ => Role::Admin,
        };
        let role = role_of(&token);
        if role < needed {
            log.record(false);
            let how = if route.collection == Collection::Bindings && needed == Role::Admin {
                "; binding a VPC Network directly to a tunnel id needs the admin role: bind \
                 it by network id"
            } else {
                ""
            };
            return Err(Refusal::new(
                403,
                code::FORBIDDEN,
                format!(
                    "{} {} needs the {} role; this token has the {} role{how}",
                    action.name(),
                    route.collection.singular(),
                    needed.as_str(),
                    role.as_str()
                ),
            ));
        }
        log.record(true);
        let query = Query::parse(request.query.as_deref());
        match (route.collection, action) {
            (Collection::Tokens, Action::List) => self.list_tokens(&account, &query),
            (Collection::Tokens, Action::Create) => self.create_token(&account, &request.body),
            (Collection::Tokens, Action::Delete) => self.delete_token(&account, route.id),
            (Collection::Tokens, _) => Err(Refusal::new(
                405,
                code::METHOD,
                "API tokens are created, listed and deleted",
            )),
            (collection, Action::List) => self.list(&account, collection, &query),
            (collection, Action::Get) => self.get(&account, collection, route.id),
            (Collection::Tunnels, Action::TunnelToken) => self.tunnel_token(&account, route.id),
            (collection, Action::Create) => self.create(&account, collection, &request.body).await,
            (Collection::Bindings | Collection::Tunnels, Action::Replace) => Err(Refusal::new(
                405,
                code::METHOD,
                format!(
                    "a {} cannot be replaced: delete it and create it again",
                    route.collection.singular()
                ),
            )),
            (collection, Action::Replace) => {
                self.replace(&account, collection, route.id, &request.body)
                    .await
            }
            (collection, Action::Delete) => self.delete(&account, collection, route.id).await,
            (_, Action::TunnelToken) => Err(Refusal::not_found("endpoint")),
        }
    }

    fn authenticate(&self, request: &ApiRequest) -> Result<ApiToken, Refusal> {
        let unauthenticated = |why: &str| {
            info!(
                action = "authenticate",
                allowed = false,
                why,
                "api decision"
            );
            Refusal::new(401, code::UNAUTHENTICATED, why.to_owned())
        };
        let Some(header) = request.headers.get(http::header::AUTHORIZATION) else {
            return Err(unauthenticated(
                "this endpoint needs an API token: Authorization: Bearer <token>",
            ));
        };
        let presented = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        match self.backend.token(presented)? {
            Some(token) => Ok(token),
            None => Err(unauthenticated("the API token is not valid on this edge")),
        }
    }

    fn account_of(&self, token: &ApiToken, asked: &str) -> Result<Account, Refusal> {
        let accounts = self.backend.accounts()?;
        let found = accounts
            .into_iter()
            .find(|a| a.id == token.account && (parse_id(asked) == Some(a.id) || a.name == asked));
        found.ok_or_else(|| {
            info!(
                token = %format_id(&token.id),
                account = asked,
                allowed = false,
                "api decision: not the token's account"
            );
            Refusal::not_found(format!("account {asked}"))
        })
    }

    /// Bind may create bindings to services and to networks; one to a tunnel id needs Admin.
    fn binding_create_role(&self, request: &ApiRequest) -> Role {
        match schema::parse_body::<BindingBody>(&request.body)
            .ok()
            .and_then(|body| schema::validate_binding(body).ok())
        {
            Some(spec) if matches!(spec.target, BindingTargetSpec::Tunnel(_)) => Role::Admin,
            // A body that does not parse is answered 400 by the create itself.
            _ => Role::Bind,
        }
    }

    fn binding_delete_role(&self, account: &Account, id: Option<&str>) -> Result<Role, Refusal> {
        let record = id
            .and_then(parse_id)
            .map(|id| self.backend.get(&account.id, Kind::Binding, &id))
            .transpose()?
            .flatten();
        let spec = record.and_then(|r| serde_json::from_str::<BindingSpec>(&r.body).ok());
        Ok(match spec {
            Some(spec) if matches!(spec.target, BindingTargetSpec::Tunnel(_)) => Role::Admin,
            _ => Role::Bind,
        })
    }

    fn find(
        &self,
        account: &Account,
        collection: Collection,
        id: Option<&str>,
    ) -> Result<Record, Refusal> {
        let what = || format!("{} {}", collection.singular(), id.unwrap_or(""));
        let kind = collection
            .kind()
            .ok_or_else(|| Refusal::not_found(what()))?;
        let id = id
            .and_then(parse_id)
            .ok_or_else(|| Refusal::not_found(what()))?;
        self.backend
            .get(&account.id, kind, &id)?
            .ok_or_else(|| Refusal::not_found(what()))
    }

    /// The JSON of a stored object, as the API returns it.
    fn view(
        &self,
        account: &Account,
        collection: Collection,
        record: &Record,
    ) -> Result<Value, Refusal> {
        let broken = || {
            Refusal::internal(format!(
                "stored {} {} does not parse",
                collection.singular(),
                record.name
            ))
        };
        Ok(match collection {
            Collection::Services => {
                let spec: ServiceSpec = serde_json::from_str(&record.body).map_err(|_| broken())?;
                schema::service_json(&record.id, &spec, record.created_at, record.updated_at)
            }
            Collection::Networks => {
                let spec: NetworkSpec = serde_json::from_str(&record.body).map_err(|_| broken())?;
                schema::network_json(&record.id, &spec, record.created_at, record.updated_at)
            }
            Collection::Bindings => {
                let spec: BindingSpec = serde_json::from_str(&record.body).map_err(|_| broken())?;
                let mut value =
                    schema::binding_json(&record.id, &spec, record.created_at, record.updated_at);
                let address = self
                    .edge
                    .binding_addr(&served_name(&account.name, &spec.name))
                    .map(|addr| addr.to_string());
                value["address"] = json!(address);
                value
            }
            Collection::Tunnels => json!({
                "id": format_id(&record.id),
                "name": record.name,
                "created_at": schema::rfc3339(record.created_at),
            }),
            Collection::Tokens => return Err(broken()),
        })
    }

    fn list(&self, account: &Account, collection: Collection, query: &Query) -> Answer {
        let kind = collection
            .kind()
            .ok_or_else(|| Refusal::not_found("endpoint"))?;
        let records = self.backend.list(Some(&account.id), kind)?;
        let total = records.len();
        let items = query
            .page_of(&records)
            .iter()
            .map(|record| self.view(account, collection, record))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((200, envelope_list(items, query.page, query.per_page, total)))
    }

    fn get(&self, account: &Account, collection: Collection, id: Option<&str>) -> Answer {
        let record = self.find(account, collection, id)?;
        Ok((200, envelope_ok(self.view(account, collection, &record)?)))
    }

    fn tunnel_token(&self, account: &Account, id: Option<&str>) -> Answer {
        let record = self.find(account, Collection::Tunnels, id)?;
        let tunnel =
            tunnel_of(&record).ok_or_else(|| Refusal::internal("stored tunnel does not parse"))?;
        Ok((
            200,
            envelope_ok(json!({ "token": self.edge.connector_token(&tunnel) })),
        ))
    }

    /// Validate a body into the stored name and JSON, checking what it refers to exists in
    /// the account.
    fn stored_body(
        &self,
        account: &Account,
        collection: Collection,
        body: &[u8],
    ) -> Result<(String, String), Refusal> {
        let exists = |kind: Kind, id: &Id| -> Result<bool, Refusal> {
            Ok(self.backend.get(&account.id, kind, id)?.is_some())
        };
        let to_json = |value: &dyn erased::Json| value.json().map_err(Refusal::internal);
        match collection {
            Collection::Services => {
                let parsed: ServiceBody =
                    schema::parse_body(body).map_err(|e| Refusal::fields(&[e]))?;
                let spec = schema::validate_service(parsed).map_err(|e| Refusal::fields(&e))?;
                let (field, tunnel) = match &spec.host {
                    schema::HostSpec::Ip { tunnel_id, .. } => ("host.network.tunnel_id", tunnel_id),
                    schema::HostSpec::Hostname { tunnel_id, .. } => {
                        ("host.resolver_network.tunnel_id", tunnel_id)
                    }
                };
                if !exists(Kind::Tunnel, tunnel)? {
                    return Err(Refusal::field(
                        field,
                        "no tunnel with this id in the account",
                    ));
                }
                Ok((spec.name.clone(), to_json(&spec)?))
            }
            Collection::Networks => {
                let parsed: NetworkBody =
                    schema::parse_body(body).map_err(|e| Refusal::fields(&[e]))?;
                let spec = schema::validate_network(parsed).map_err(|e| Refusal::fields(&e))?;
                if let Some(tunnel) = &spec.tunnel_id {
                    if !exists(Kind::Tunnel, tunnel)? {
                        return Err(Refusal::field(
                            "tunnel_id",
                            "no tunnel with this id in the account",
                        ));
                    }
                }
                Ok((spec.name.clone(), to_json(&spec)?))
            }
            Collection::Bindings => {
                let parsed: BindingBody =
                    schema::parse_body(body).map_err(|e| Refusal::fields(&[e]))?;
                let spec = schema::validate_binding(parsed).map_err(|e| Refusal::fields(&e))?;
                let (field, kind, id) = match &spec.target {
                    BindingTargetSpec::Service(id) => ("service_id", Kind::Service, id),
                    BindingTargetSpec::Network(id) => ("network_id", Kind::Network, id),
                    BindingTargetSpec::Tunnel(id) => ("tunnel_id", Kind::Tunnel, id),
                };
                if !exists(kind, id)? {
                    return Err(Refusal::field(
                        field,
                        format!("no {kind} with this id in the account"),
                    ));
                }
                if let (BindingTargetSpec::Service(id), schema::BindingModeSpec::Tcp) =
                    (&spec.target, spec.mode)
                {
                    let service = self.backend.get(&account.id, Kind::Service, id)?;
                    let is_tcp = service
                        .and_then(|r| serde_json::from_str::<ServiceSpec>(&r.body).ok())
                        .is_some_and(|s| s.kind == schema::ServiceKind::Tcp);
                    if !is_tcp {
                        return Err(Refusal::field(
                            "mode",
                            "mode \"tcp\" serves only a tcp service",
                        ));
                    }
                }
                Ok((spec.name.clone(), to_json(&spec)?))
            }
            Collection::Tunnels => {
                let parsed: TunnelCreateBody =
                    schema::parse_body(body).map_err(|e| Refusal::fields(&[e]))?;
                let name = schema::validate_tunnel_name(parsed).map_err(|e| Refusal::fields(&e))?;
                let mut secret = [0u8; 32];
                OsRng.fill_bytes(&mut secret);
                let stored = TunnelBody {
                    secret: hex::encode(secret),
                };
                Ok((
                    name,
                    serde_json::to_string(&stored).map_err(Refusal::internal)?,
                ))
            }
            Collection::Tokens => Err(Refusal::not_found("endpoint")),
        }
    }

    async fn create(&self, account: &Account, collection: Collection, body: &[u8]) -> Answer {
        let kind = collection
            .kind()
            .ok_or_else(|| Refusal::not_found("endpoint"))?;
        let _one = self.writes.lock().await;
        let (name, stored) = self.stored_body(account, collection, body)?;
        let now = db::now();
        let record = Record {
            account: account.id,
            kind,
            id: db::new_id(),
            name,
            body: stored,
            created_at: now,
            updated_at: now,
        };
        self.backend.insert(&record)?;
        if let Err(error) = self.edge.apply().await {
            // Nothing changed on the edge: take the object back out.
            let _ = self.backend.delete(&account.id, kind, &record.id);
            return Err(Refusal::new(409, code::CONFLICT, error));
        }
        let mut view = self.view(account, collection, &record)?;
        if collection == Collection::Tunnels {
            if let Some(tunnel) = tunnel_of(&record) {
                view["token"] = json!(self.edge.connector_token(&tunnel));
            }
        }
        Ok((200, envelope_ok(view)))
    }

    async fn replace(
        &self,
        account: &Account,
        collection: Collection,
        id: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let _one = self.writes.lock().await;
        let old = self.find(account, collection, id)?;
        let (name, stored) = self.stored_body(account, collection, body)?;
        let Some(new) = self
            .backend
            .update(&account.id, old.kind, &old.id, &name, &stored)?
        else {
            return Err(Refusal::not_found(format!(
                "{} {}",
                collection.singular(),
                id.unwrap_or("")
            )));
        };
        if let Err(error) = self.edge.apply().await {
            let _ = self
                .backend
                .update(&account.id, old.kind, &old.id, &old.name, &old.body);
            return Err(Refusal::new(409, code::CONFLICT, error));
        }
        Ok((200, envelope_ok(self.view(account, collection, &new)?)))
    }

    async fn delete(&self, account: &Account, collection: Collection, id: Option<&str>) -> Answer {
        let _one = self.writes.lock().await;
        let record = self.find(account, collection, id)?;
        if let Some(user) = self.used_by(account, &record)? {
            return Err(Refusal::new(
                409,
                code::CONFLICT,
                format!(
                    "{} {:?} is still used by {user}; delete that first",
                    collection.singular(),
                    record.name
                ),
            ));
        }
        let view = self.view(account, collection, &record)?;
        self.backend.delete(&account.id, record.kind, &record.id)?;
        if let Err(error) = self.edge.apply().await {
            let _ = self.backend.insert(&record);
            return Err(Refusal::new(409, code::CONFLICT, error));
        }
        Ok((200, envelope_ok(view)))
    }

    /// What in the account still refers to `record` (a service or network bound, a tunnel a
    /// service, network or binding uses).
    fn used_by(&self, account: &Account, record: &Record) -> Result<Option<String>, Refusal> {
        let target = record.id;
        for binding in self.backend.list(Some(&account.id), Kind::Binding)? {
            let Ok(spec) = serde_json::from_str::<BindingSpec>(&binding.body) else {
                continue;
            };
            let uses = match spec.target {
                BindingTargetSpec::Service(id)
                | BindingTargetSpec::Network(id)
                | BindingTargetSpec::Tunnel(id) => id == target,
            };
            if uses {
                return Ok(Some(format!("binding {:?}", binding.name)));
            }
        }
        if record.kind != Kind::Tunnel {
            return Ok(None);
        }
        for service in self.backend.list(Some(&account.id), Kind::Service)? {
            let Ok(spec) = serde_json::from_str::<ServiceSpec>(&service.body) else {
                continue;
            };
            let tunnel = spec.host.tunnel_id();
            if *tunnel == target {
                return Ok(Some(format!("service {:?}", service.name)));
            }
        }
        for network in self.backend.list(Some(&account.id), Kind::Network)? {
            let Ok(spec) = serde_json::from_str::<NetworkSpec>(&network.body) else {
                continue;
            };
            if spec.tunnel_id == Some(target) {
                return Ok(Some(format!("network {:?}", network.name)));
            }
        }
        Ok(None)
    }

    fn token_view(token: &ApiToken) -> Value {
        json!({
            "id": format_id(&token.id),
            "name": token.name,
            "role": token.role,
            "created_at": schema::rfc3339(token.created_at),
        })
    }

    fn list_tokens(&self, account: &Account, query: &Query) -> Answer {
        let tokens = self.backend.tokens(&account.id)?;
        let total = tokens.len();
        let items = query.page_of(&tokens).iter().map(Api::token_view).collect();
        Ok((200, envelope_list(items, query.page, query.per_page, total)))
    }

    fn create_token(&self, account: &Account, body: &[u8]) -> Answer {
        let parsed: TokenBody = schema::parse_body(body).map_err(|e| Refusal::fields(&[e]))?;
        let spec = schema::validate_token(parsed).map_err(|e| Refusal::fields(&e))?;
        let (record, token) =
            self.backend
                .create_token(&account.id, &spec.name, spec.role.as_str())?;
        let mut view = Api::token_view(&record);
        view["token"] = json!(token);
        Ok((200, envelope_ok(view)))
    }

    fn delete_token(&self, account: &Account, id: Option<&str>) -> Answer {
        let id = id
            .and_then(parse_id)
            .ok_or_else(|| Refusal::not_found("token"))?;
        let tokens = self.backend.tokens(&account.id)?;
        let Some(token) = tokens.iter().find(|t| t.id == id) else {
            return Err(Refusal::not_found("token"));
        };
        self.backend.delete_token(&account.id, &id)?;
        Ok((200, envelope_ok(Api::token_view(token))))
    }
}

/// Logs one access decision.
struct Decision<'a> {
    token: &'a ApiToken,
    account: &'a Account,
    action: Action,
    collection: Collection,
    object: &'a str,
}

impl Decision<'_> {
    fn record(&self, allowed: bool) {
        info!(
            token = %format_id(&self.token.id),
            role = %self.token.role,
            account = %self.account.name,
            action = %format!("{}.{}", self.collection.singular(), self.action.name()),
            object = %self.object,
            allowed,
            "api decision"
        );
    }
}

/// `?page=&per_page=`.
#[derive(Debug)]
struct Query {
    page: u32,
    per_page: u32,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut parsed = Query {
            page: 1,
            per_page: DEFAULT_PER_PAGE,
        };
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (key, value.parse::<u32>()) {
                ("page", Ok(page)) if page > 0 => parsed.page = page,
                ("per_page", Ok(n)) if n > 0 => parsed.per_page = n.min(MAX_PER_PAGE),
                _ => {}
            }
        }
        parsed
    }

    fn page_of<'a, T>(&self, all: &'a [T]) -> &'a [T] {
        let start = (self.page as usize - 1).saturating_mul(self.per_page as usize);
        let start = start.min(all.len());
        let end = start.saturating_add(self.per_page as usize).min(all.len());
        &all[start..end]
    }
}

/// Serializing a stored spec.
mod erased {
    /// Anything stored as JSON.
    pub(super) trait Json {
        fn json(&self) -> Result<String, serde_json::Error>;
    }

    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Result<String, serde_json::Error> {
            serde_json::to_string(self)
        }
    }
}
