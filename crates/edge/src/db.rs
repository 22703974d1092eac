//! The directory database: accounts, API tokens and the directory objects created through the
//! admin API (tunnels, VPC Services, VPC Networks, bindings), in an embedded SQLite file
//! (`directory.db`, mode 0600) in the edge's state directory.
//!
//! - **Migrations** are numbered and kept in `MIGRATIONS`; the database's `user_version`
//!   says how many ran. Opening applies the missing ones, each in its own transaction; a
//!   database newer than this edge is refused rather than misread.
//! - **WAL** journal, foreign keys on, a busy timeout so that the CLI (`token create`) and a
//!   serving edge can write the same file.
//! - **Every write is one transaction.** A name taken in the same account is refused by a
//!   unique index, not by a check that could race.
//! - **API tokens are stored hashed** (SHA-256 of the whole token); the token itself is shown
//!   once, when it is made.
//!
//! Objects are stored as their validated JSON (`body`) beside the columns that identify them
//! (account, kind, id, name), so that the API layer owns the shapes and the store stays small.
//! The API layer talks to a [`DirectoryBackend`]; [`SqliteBackend`] is the one there is, and a
//! shared store (PostgreSQL, for several edges) can implement the same trait.

use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

/// The file name inside the state directory.
pub const DATABASE_FILE: &str = "directory.db";
/// What an API token starts with (`upa1_` + 43 base64url characters).
pub const TOKEN_PREFIX: &str = "upa1_";
/// How long a write waits for another process's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one step per entry: entry `n` brings `user_version` from `n` to `n + 1`.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE accounts (
        id         BLOB PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE api_tokens (
        id         BLOB PRIMARY KEY,
        account_id BLOB NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        role       TEXT NOT NULL,
        hash       BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE objects (
        account_id BLOB NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        kind       TEXT NOT NULL,
        id         BLOB NOT NULL,
        name       TEXT NOT NULL,
        body       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (kind, id),
        UNIQUE (account_id, kind, name)
    );
"];

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no (a broken file, a full disk, a lock held too long).
    #[error("directory database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The file could not be created or its mode set.
    #[error("directory database {path}: {source}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer edge.
    #[error(
        "directory database {path} has schema version {found}; this edge knows up to {known}: \
         run the newer edge, or restore a backup"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: u32,
        /// The newest this edge knows.
        known: u32,
    },
    /// Another object of the same kind in the same account has this name.
    #[error("a {kind} named {name:?} already exists in this account")]
    NameTaken {
        /// The object kind.
        kind: Kind,
        /// The name.
        name: String,
    },
}

/// A 16-byte id (accounts, tokens, objects); shown as a UUID by the API.
pub type Id = [u8; 16];

/// A new random id.
pub fn new_id() -> Id {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    // Version 4, variant 1: a well-formed random UUID.
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An account: the tenant every object and token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its id.
    pub id: Id,
    /// Its name (unique on the edge).
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
}

/// An API token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Its id.
    pub id: Id,
    /// The account it acts in.
    pub account: Id,
    /// A label.
    pub name: String,
    /// `read`, `bind` or `admin`.
    pub role: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
}

/// The kinds of directory object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A tunnel (its secret is in the body).
    Tunnel,
    /// A VPC Service.
    Service,
    /// A VPC Network.
    Network,
    /// A binding.
    Binding,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Tunnel => "tunnel",
            Kind::Service => "service",
            Kind::Network => "network",
            Kind::Binding => "binding",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The account it belongs to.
    pub account: Id,
    /// What it is.
    pub kind: Kind,
    /// Its id.
    pub id: Id,
    /// Its name (unique per account and kind).
    pub name: String,
    /// Its validated JSON.
    pub body: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Last change, seconds since the Unix epoch.
    pub updated_at: u64,
}

/// Where the directory's accounts, tokens and objects are kept.
pub trait DirectoryBackend: Send + Sync + 'static {
    /// The account called `name`.
    fn account(&self, name: &str) -> Result<Option<Account>, DbError>;
    /// The account called `name`, created if there is none.
    fn ensure_account(&self, name: &str) -> Result<Account, DbError>;
    /// Every account.
    fn accounts(&self) -> Result<Vec<Account>, DbError>;
    /// Make a token with `role` in `account`: the record and the token, which is not kept.
    fn create_token(
        &self,
        account: &Id,
        name: &str,
        role: &str,
    ) -> Result<(ApiToken, String), DbError>;
    /// The token presented, if it is one of ours.
    fn token(&self, presented: &str) -> Result<Option<ApiToken>, DbError>;
    /// The tokens of `account`.
    fn tokens(&self, account: &Id) -> Result<Vec<ApiToken>, DbError>;
    /// Delete a token of `account`; whether it existed.
    fn delete_token(&self, account: &Id, id: &Id) -> Result<bool, DbError>;
    /// Store a new object.
    fn insert(&self, record: &Record) -> Result<(), DbError>;
    /// Replace an object's name and body (its `updated_at` set now); `None` if there is none.
    fn update(
        &self,
        account: &Id,
        kind: Kind,
        id: &Id,
        name: &str,
        body: &str,
    ) -> Result<Option<Record>, DbError>;
    /// One object of `account`.
    fn get(&self, account: &Id, kind: Kind, id: &Id) -> Result<Option<Record>, DbError>;
    /// The objects of a kind, of one account or (`None`) of all, oldest first.
    fn list(&self, account: Option<&Id>, kind: Kind) -> Result<Vec<Record>, DbError>;
    /// Delete an object of `account`; what it was.
    fn delete(&self, account: &Id, kind: Kind, id: &Id) -> Result<Option<Record>, DbError>;
}

/// The SQLite database of one state directory.
pub struct SqliteBackend {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Open (or create, mode 0600) `directory.db` in `state_dir` and bring its schema up to
    /// date.
    pub fn open(state_dir: &Path) -> Result<SqliteBackend, DbError> {
        let path = state_dir.join(DATABASE_FILE);
        let io = |source| DbError::Io {
            path: path.clone(),
            source,
        };
        // Create it ourselves with 0600 (SQLite would use the umask); SQLite gives the WAL
        // and shared-memory files the same mode.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let sqlite = |source| DbError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(sqlite)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sqlite)?;
        migrate(&mut conn, &path)?;
        Ok(SqliteBackend {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a statement leaves SQLite consistent (the transaction rolls back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

/// Apply the migrations `conn` has not seen, each in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    let sqlite = |source| DbError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let known = MIGRATIONS.len() as u32;
    let found: u32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite)?;
    if found > known {
        return Err(DbError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite)?;
        tx.execute_batch(sql).map_err(sqlite)?;
        tx.pragma_update(None, "user_version", step as u32 + 1)
            .map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
    }
    Ok(())
}

fn id_of(value: Vec<u8>) -> Id {
    let mut id = [0u8; 16];
    if value.len() == 16 {
        id.copy_from_slice(&value);
    }
    id
}

fn kind_of(text: &str) -> Kind {
    match text {
        "tunnel" => Kind::Tunnel,
        "service" => Kind::Service,
        "network" => Kind::Network,
        _ => Kind::Binding,
    }
}

fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

const RECORD_COLUMNS: &str = "account_id, kind, id, name, body, created_at, updated_at";

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        account: id_of(row.get(0)?),
        kind: kind_of(&row.get::<_, String>(1)?),
        id: id_of(row.get(2)?),
        name: row.get(3)?,
        body: row.get(4)?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
    })
}

fn token_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        id: id_of(row.get(0)?),
        account: id_of(row.get(1)?),
        name: row.get(2)?,
        role: row.get(3)?,
        created_at: row.get(4)?,
    })
}

fn account_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: id_of(row.get(0)?),
        name: row.get(1)?,
        created_at: row.get(2)?,
    })
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

impl DirectoryBackend for SqliteBackend {
    fn account(&self, name: &str) -> Result<Option<Account>, DbError> {
        self.conn()
            .query_row(
                "SELECT id, name, created_at FROM accounts WHERE name = ?1",
                params![name],
                account_row,
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    fn ensure_account(&self, name: &str) -> Result<Account, DbError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let found = tx
            .query_row(
                "SELECT id, name, created_at FROM accounts WHERE name = ?1",
                params![name],
                account_row,
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let account = match found {
            Some(account) => account,
            None => {
                let account = Account {
                    id: new_id(),
                    name: name.to_owned(),
                    created_at: now(),
                };
                tx.execute(
                    "INSERT INTO accounts (id, name, created_at) VALUES (?1, ?2, ?3)",
                    params![&account.id[..], account.name, account.created_at],
                )
                .map_err(|e| self.error(e))?;
                account
            }
        };
        tx.commit().map_err(|e| self.error(e))?;
        Ok(account)
    }

    fn accounts(&self) -> Result<Vec<Account>, DbError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare("SELECT id, name, created_at FROM accounts ORDER BY created_at, name")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], account_row)
            .and_then(Iterator::collect)
            .map_err(|e| self.error(e));
        rows
    }

    fn create_token(
        &self,
        account: &Id,
        name: &str,
        role: &str,
    ) -> Result<(ApiToken, String), DbError> {
        use base64::Engine as _;
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let record = ApiToken {
            id: new_id(),
            account: *account,
            name: name.to_owned(),
            role: role.to_owned(),
            created_at: now(),
        };
        self.conn()
            .execute(
                "INSERT INTO api_tokens (id, account_id, name, role, hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    &record.id[..],
                    &record.account[..],
                    record.name,
                    record.role,
                    hash_token(&token),
                    record.created_at
                ],
            )
            .map_err(|e| self.error(e))?;
        Ok((record, token))
    }

    fn token(&self, presented: &str) -> Result<Option<ApiToken>, DbError> {
        if !presented.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        self.conn()
            .query_row(
                "SELECT id, account_id, name, role, created_at FROM api_tokens WHERE hash = ?1",
                params![hash_token(presented)],
                token_row,
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    fn tokens(&self, account: &Id) -> Result<Vec<ApiToken>, DbError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT id, account_id, name, role, created_at FROM api_tokens \
                 WHERE account_id = ?1 ORDER BY created_at, name",
            )
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map(params![&account[..]], token_row)
            .and_then(Iterator::collect)
            .map_err(|e| self.error(e));
        rows
    }

    fn delete_token(&self, account: &Id, id: &Id) -> Result<bool, DbError> {
        let deleted = self
            .conn()
            .execute(
                "DELETE FROM api_tokens WHERE account_id = ?1 AND id = ?2",
                params![&account[..], &id[..]],
            )
            .map_err(|e| self.error(e))?;
        Ok(deleted > 0)
    }

    fn insert(&self, record: &Record) -> Result<(), DbError> {
        let result = self.conn().execute(
            &format!("INSERT INTO objects ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                &record.account[..],
                record.kind.as_str(),
                &record.id[..],
                record.name,
                record.body,
                record.created_at,
                record.updated_at
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_unique_violation(&error) => Err(DbError::NameTaken {
                kind: record.kind,
                name: record.name.clone(),
            }),
            Err(error) => Err(self.error(error)),
        }
    }

    fn update(
        &self,
        account: &Id,
        kind: Kind,
        id: &Id,
        name: &str,
        body: &str,
    ) -> Result<Option<Record>, DbError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let changed = tx.execute(
            "UPDATE objects SET name = ?4, body = ?5, updated_at = ?6 \
             WHERE account_id = ?1 AND kind = ?2 AND id = ?3",
            params![&account[..], kind.as_str(), &id[..], name, body, now()],
        );
        match changed {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                return Err(DbError::NameTaken {
                    kind,
                    name: name.to_owned(),
                })
            }
            Err(error) => return Err(self.error(error)),
        }
        let record = tx
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM objects WHERE kind = ?1 AND id = ?2"),
                params![kind.as_str(), &id[..]],
                record,
            )
            .optional()
            .map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        Ok(record)
    }

    fn get(&self, account: &Id, kind: Kind, id: &Id) -> Result<Option<Record>, DbError> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM objects \
                     WHERE account_id = ?1 AND kind = ?2 AND id = ?3"
                ),
                params![&account[..], kind.as_str(), &id[..]],
                record,
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    fn list(&self, account: Option<&Id>, kind: Kind) -> Result<Vec<Record>, DbError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM objects \
                 WHERE kind = ?1 AND (?2 IS NULL OR account_id = ?2) \
                 ORDER BY created_at, name"
            ))
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map(params![kind.as_str(), account.map(|a| &a[..])], record)
            .and_then(Iterator::collect)
            .map_err(|e| self.error(e));
        rows
    }

    fn delete(&self, account: &Id, kind: Kind, id: &Id) -> Result<Option<Record>, DbError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let found = tx
            .query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM objects \
                     WHERE account_id = ?1 AND kind = ?2 AND id = ?3"
                ),
                params![&account[..], kind.as_str(), &id[..]],
                record,
            )
            .optional()
            .map_err(|e| self.error(e))?;
        if found.is_some() {
            tx.execute(
                "DELETE FROM objects WHERE account_id = ?1 AND kind = ?2 AND id = ?3",
                params![&account[..], kind.as_str(), &id[..]],
            )
            .map_err(|e| self.error(e))?;
        }
        tx.commit().map_err(|e| self.error(e))?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(account: &Account, kind: Kind, name: &str) -> Record {
        Record {
            account: account.id,
            kind,
            id: new_id(),
            name: name.into(),
            body: format!("{{\"name\":{name:?}}}"),
            created_at: now(),
            updated_at: now(),
        }
    }

    #[test]
    fn a_fresh_database_is_private_migrated_and_reopens_with_its_data() {
        let dir = tempfile::tempdir().unwrap(); // test scratch space
        let db = SqliteBackend::open(dir.path()).unwrap(); // a fresh file
        let mode = std::fs::metadata(db.path()).unwrap().permissions().mode(); // it exists
        assert_eq!(mode & 0o777, 0o600);
        let version: u32 = db
            .conn()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap(); // the pragma exists
        assert_eq!(version, MIGRATIONS.len() as u32);
        let journal: String = db
            .conn()
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap(); // idem
        assert_eq!(journal, "wal");

        let acme = db.ensure_account("acme").unwrap(); // first write
        let service = object(&acme, Kind::Service, "web");
        db.insert(&service).unwrap(); // a new name
        drop(db);
        let db = SqliteBackend::open(dir.path()).unwrap(); // reopened
        assert_eq!(db.ensure_account("acme").unwrap(), acme); // same account
        assert_eq!(
            db.get(&acme.id, Kind::Service, &service.id).unwrap(), // a read
            Some(service)
        );
    }

    #[test]
    fn a_database_from_a_newer_edge_is_refused() {
        let dir = tempfile::tempdir().unwrap(); // test scratch space
        drop(SqliteBackend::open(dir.path()).unwrap()); // created
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap(); // exists
        conn.pragma_update(None, "user_version", 99).unwrap(); // writable
        drop(conn);
        let error = SqliteBackend::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("schema version 99"), "{error}");
    }

    #[test]
    fn names_are_unique_per_account_and_kind_and_objects_stay_in_their_account() {
        let dir = tempfile::tempdir().unwrap(); // test scratch space
        let db = SqliteBackend::open(dir.path()).unwrap(); // fresh
        let acme = db.ensure_account("acme").unwrap(); // write
        let other = db.ensure_account("other").unwrap(); // write
        let web = object(&acme, Kind::Service, "web");
        db.insert(&web).unwrap(); // first
        let again = db.insert(&object(&acme, Kind::Service, "web")).unwrap_err();
        assert!(matches!(again, DbError::NameTaken { .. }), "{again}");
        // Same name, other kind or other account: fine.
        db.insert(&object(&acme, Kind::Network, "web")).unwrap(); // other kind
        db.insert(&object(&other, Kind::Service, "web")).unwrap(); // other account
        assert_eq!(db.get(&other.id, Kind::Service, &web.id).unwrap(), None); // a read
        assert_eq!(db.delete(&other.id, Kind::Service, &web.id).unwrap(), None); // a write
        assert_eq!(db.list(Some(&acme.id), Kind::Service).unwrap().len(), 1); // a read
        assert_eq!(db.list(None, Kind::Service).unwrap().len(), 2); // a read

        let renamed = db
            .update(&acme.id, Kind::Service, &web.id, "api", "{}")
            .unwrap() // a write
            .unwrap(); // it exists
        assert_eq!(
            (renamed.name.as_str(), renamed.body.as_str()),
            ("api", "{}")
        );
        assert_eq!(renamed.created_at, web.created_at);
        assert_eq!(
            db.delete(&acme.id, Kind::Service, &web.id).unwrap(), // a write
            Some(renamed)
        );
        assert_eq!(db.get(&acme.id, Kind::Service, &web.id).unwrap(), None); // a read
    }

    #[test]
    fn tokens_are_stored_hashed_and_found_by_the_token() {
        let dir = tempfile::tempdir().unwrap(); // test scratch space
        let db = SqliteBackend::open(dir.path()).unwrap(); // fresh
        let acme = db.ensure_account("acme").unwrap(); // write
        let (record, token) = db.create_token(&acme.id, "ci", "bind").unwrap(); // write
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == TOKEN_PREFIX.len() + 43);
        assert_eq!(db.token(&token).unwrap(), Some(record.clone())); // a read
        assert_eq!(db.token(&format!("{token}x")).unwrap(), None); // a read
        assert_eq!(db.token("Bearer nonsense").unwrap(), None); // a read
                                                                // The file holds the hash, never the token.
        drop(db);
        let raw = std::fs::read(dir.path().join(DATABASE_FILE)).unwrap(); // exists
        let wal =
            std::fs::read(dir.path().join(format!("{DATABASE_FILE}-wal"))).unwrap_or_default();
        let needle = token.as_bytes();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
        let db = SqliteBackend::open(dir.path()).unwrap(); // reopened
        assert_eq!(db.tokens(&acme.id).unwrap(), vec![record.clone()]); // a read
        assert!(db.delete_token(&acme.id, &record.id).unwrap()); // a write
        assert_eq!(db.token(&token).unwrap(), None); // a read
    }
}
