//! Checks the test PostgreSQL server itself: it accepts the superuser's
//! password over TCP and refuses a wrong one, each test database stands
//! alone, and a dropped guard removes its database.

mod support;

use support::postgres;

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn server_takes_password_connections_and_refuses_a_wrong_password() {
    let Some(db) = postgres::database() else {
        return;
    };
    let client = connect(&db.url()).await.expect("connect with the password");
    let row = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), db.name);

    let wrong = db.url().replace(&db.server.password, "not-the-password");
    let error = connect(&wrong)
        .await
        .expect_err("a wrong password is refused");
    let code = error.as_db_error().map(|e| e.code().code().to_string());
    assert_eq!(code.as_deref(), Some("28P01"), "{error}");
}

#[tokio::test]
async fn databases_are_separate_and_dropped_with_their_guard() {
    let Some(first) = postgres::database() else {
        return;
    };
    let second = postgres::database().unwrap();
    first.psql("CREATE TABLE only_here (x int)");
    assert_eq!(
        first.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'"),
        "1"
    );
    assert_eq!(
        second.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'"),
        "0"
    );

    let server = first.server;
    let name = first.name.clone();
    let exists = format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'");
    assert_eq!(server.psql("postgres", &exists), "1");
    drop(first);
    assert_eq!(server.psql("postgres", &exists), "0");
}
