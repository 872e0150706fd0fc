//! Statements with their parameters' types given: prepared once per
//! connection where that is safe, sent unnamed where it is not.
//!
//! A named prepared statement lives on one server connection. Behind
//! PgBouncer in transaction mode, consecutive statements of one client
//! outside a transaction may run on different server connections, so a
//! statement prepared on one is missing on the next ("prepared statement
//! does not exist"). A statement sent unnamed (`query_typed`: parse, bind
//! and execute together, one round trip) works behind any pooler, but the
//! server parses and plans it on every call: for the queue's hot
//! statements that was a fifth of the server's time (a profile of
//! `bench_postgres`), and most of a lone `/runsync`'s statement time.
//!
//! So the queue's hot statements go through [`query`], which prepares
//! each one once per pooled connection (deadpool's statement cache) when
//! the queue's URL is a direct connection, and sends it unnamed when it
//! may be a pooler's. A URL that can hold a `LISTEN` is direct or
//! session-pooled, where a connection is the client's own; one given a
//! separate `--queue-listen-url`, or none (`off`), is taken for PgBouncer
//! in transaction mode ([`super::postgres_conn::PgTarget::statements`]).
//! [`p`] pairs a value with its PostgreSQL type, from the Rust type, so a
//! call reads `&[p(&id), p(&token)]`.

use async_trait::async_trait;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, Row};

/// How a pool's statements are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Statements {
    /// Prepared once per connection, then bound and executed.
    Prepared,
    /// Parsed, planned and executed on every call.
    Unnamed,
}

/// A pooled connection or one of its transactions.
#[async_trait]
pub(super) trait Typed: deadpool_postgres::GenericClient {
    /// `sql` sent unnamed.
    async fn unnamed(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error>;
    /// The connection's statement cache.
    fn cache(&self) -> &deadpool_postgres::StatementCache;
}

#[async_trait]
impl Typed for deadpool_postgres::Client {
    async fn unnamed(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error> {
        self.query_typed(sql, params).await
    }
    fn cache(&self) -> &deadpool_postgres::StatementCache {
        &self.statement_cache
    }
}

#[async_trait]
impl Typed for deadpool_postgres::Transaction<'_> {
    async fn unnamed(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error> {
        self.query_typed(sql, params).await
    }
    fn cache(&self) -> &deadpool_postgres::StatementCache {
        &self.statement_cache
    }
}

/// Runs `sql` with `params` on `client`, sent as `how` says. A prepared
/// statement the server no longer has, or whose result changed shape (a
/// newer jobpipe migrated the schema meanwhile), is dropped from the
/// connection's cache with the error, so the caller's next try prepares
/// it afresh.
pub(super) async fn query(
    client: &impl Typed,
    how: Statements,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<Row>, Error> {
    match how {
        Statements::Unnamed => client.unnamed(sql, params).await,
        Statements::Prepared => {
            let types = types(params);
            let statement = client.prepare_typed_cached(sql, &types).await?;
            let rows = client.query(&statement, &values(params)).await;
            forget_if_stale(client, sql, &types, &rows);
            rows
        }
    }
}

/// [`query`], with `then` pipelined right behind it on the same
/// connection: both are sent before either is answered, and the server
/// runs `then` once `sql` (and its commit) is done, without waiting for the
/// round trip back to us. The second value says whether `then` ran; its
/// rows are dropped. Prepared statements only (the caller checks `how`):
/// both are prepared first, so the two executions are sent in order, which
/// a pooler in transaction mode would not keep (they could run on two
/// server connections).
pub(super) async fn query_then(
    client: &impl Typed,
    sql: &str,
    params: &[Param<'_>],
    then: &str,
    then_params: &[Param<'_>],
) -> (Result<Vec<Row>, Error>, bool) {
    let (types, then_types) = (types(params), types(then_params));
    let first = match client.prepare_typed_cached(sql, &types).await {
        Ok(statement) => statement,
        Err(e) => return (Err(e), false),
    };
    let Ok(second) = client.prepare_typed_cached(then, &then_types).await else {
        return (
            query(client, Statements::Prepared, sql, params).await,
            false,
        );
    };
    let (values, then_values) = (values(params), values(then_params));
    // `join!` polls in order: the first execution is sent first.
    let (rows, after) = futures_util::join!(
        client.query(&first, &values),
        client.query(&second, &then_values)
    );
    forget_if_stale(client, sql, &types, &rows);
    forget_if_stale(client, then, &then_types, &after);
    (rows, after.is_ok())
}

/// Drops a prepared statement the server no longer has, or whose result
/// changed shape (a newer jobpipe migrated the schema meanwhile), from the
/// connection's cache when `outcome` says so, so the next try prepares it
/// afresh.
fn forget_if_stale<T>(client: &impl Typed, sql: &str, types: &[Type], outcome: &Result<T, Error>) {
    let stale = [
        SqlState::FEATURE_NOT_SUPPORTED,
        SqlState::INVALID_SQL_STATEMENT_NAME,
    ];
    if let Err(e) = outcome {
        if e.code().is_some_and(|code| stale.contains(code)) {
            client.cache().remove(sql, types);
        }
    }
}

fn types(params: &[Param<'_>]) -> Vec<Type> {
    params.iter().map(|(_, t)| t.clone()).collect()
}

fn values<'a>(params: &[Param<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|(v, _)| *v).collect()
}

/// A parameter and its type, as `query_typed` takes them.
pub(super) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The PostgreSQL type a Rust value is sent as.
pub(super) trait SqlType {
    const TYPE: Type;
}

impl SqlType for bool {
    const TYPE: Type = Type::BOOL;
}
impl SqlType for [bool] {
    const TYPE: Type = Type::BOOL_ARRAY;
}
impl SqlType for i64 {
    const TYPE: Type = Type::INT8;
}
impl SqlType for i32 {
    const TYPE: Type = Type::INT4;
}
impl SqlType for str {
    const TYPE: Type = Type::TEXT;
}
impl SqlType for String {
    const TYPE: Type = Type::TEXT;
}
impl SqlType for [&str] {
    const TYPE: Type = Type::TEXT_ARRAY;
}
impl SqlType for [String] {
    const TYPE: Type = Type::TEXT_ARRAY;
}
impl SqlType for [Option<&str>] {
    const TYPE: Type = Type::TEXT_ARRAY;
}
impl SqlType for [Option<String>] {
    const TYPE: Type = Type::TEXT_ARRAY;
}
impl SqlType for [i64] {
    const TYPE: Type = Type::INT8_ARRAY;
}
impl SqlType for [Option<i64>] {
    const TYPE: Type = Type::INT8_ARRAY;
}
impl SqlType for [i32] {
    const TYPE: Type = Type::INT4_ARRAY;
}
impl SqlType for [Option<i32>] {
    const TYPE: Type = Type::INT4_ARRAY;
}
impl<T> SqlType for Vec<T>
where
    [T]: SqlType,
{
    const TYPE: Type = <[T]>::TYPE;
}
impl<T: SqlType + ?Sized> SqlType for &T {
    const TYPE: Type = T::TYPE;
}
impl<T: SqlType> SqlType for Option<T> {
    const TYPE: Type = T::TYPE;
}

/// `value` with its type, for a `query_typed` parameter list.
pub(super) fn p<T: ToSql + Sync + SqlType>(value: &T) -> Param<'_> {
    (value, T::TYPE)
}
