//! Statements sent unnamed, with their parameters' types given, in one
//! round trip each.
//!
//! A named prepared statement lives on one server connection. Behind
//! PgBouncer in transaction mode, consecutive statements of one client
//! outside a transaction may run on different server connections, so a
//! statement prepared on one is missing on the next ("prepared statement
//! does not exist"). Every queue statement is therefore sent as an unnamed
//! statement (`query_typed`: parse, bind and execute together), which works
//! on a direct connection and behind any pooler alike; it is also what
//! `pgbench`'s default protocol does, so the floor it measures pays the
//! same parsing. [`p`] pairs a value with its PostgreSQL type, from the
//! Rust type, so a call reads `&[p(&id), p(&token)]`.

use tokio_postgres::types::{ToSql, Type};

/// A parameter and its type, as `query_typed` takes them.
pub(super) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The PostgreSQL type a Rust value is sent as.
pub(super) trait SqlType {
    const TYPE: Type;
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
