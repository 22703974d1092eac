//! The directory admin API: the request and response shapes with their validation
//! ([`schema`]), the database's objects as the edge serves them ([`directory`]), and the
//! requests with their access rules ([`handlers`]).

pub(crate) mod directory;
pub(crate) mod handlers;
pub(crate) mod openapi;
pub(crate) mod schema;
