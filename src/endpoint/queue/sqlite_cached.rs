//! Statements run through the connection's cache of prepared statements.
//!
//! rusqlite's `Connection::execute` and `query_row` prepare their statement
//! afresh at every call; for the queue's statements, parsing them (and the
//! triggers they fire) cost more than running them.

use rusqlite::Connection;

/// `sql` run with `params` as a prepared statement kept in the
/// connection's cache.
pub(super) fn cached_execute(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// [`cached_execute`] for a statement that returns one row.
pub(super) fn cached_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}
