//! The PostgreSQL queue's fair ranks (see [`super::fairness`]): the head
//! of each endpoint's queue and each tenant's highest waiting rank, for
//! every endpoint and tenant of a group of submissions, in one statement.

use std::collections::HashMap;

use super::postgres_typed::{p, query, Statements, Typed};
use super::{fairness, NewJob};
use crate::json::Json;

/// The fair ranks of `jobs`, in order.
pub(super) async fn fair_ranks(
    client: &impl Typed,
    how: Statements,
    jobs: &[&NewJob<Json>],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let mut pairs: Vec<(&str, &str)> = jobs
        .iter()
        .map(|job| (job.endpoint.as_str(), job.tenant.as_deref().unwrap_or("")))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let endpoints: Vec<&str> = pairs.iter().map(|(e, _)| *e).collect();
    let tenants: Vec<&str> = pairs.iter().map(|(_, t)| *t).collect();
    let rows = query(
        client,
        how,
        "SELECT u.e, u.t,
                    (SELECT j.fair_rank FROM jobpipe.jobs AS j
                      WHERE j.endpoint = u.e AND j.status = 'IN_QUEUE'
                      ORDER BY j.priority DESC, j.fair_rank LIMIT 1),
                    (SELECT MAX(j.fair_rank) FROM jobpipe.jobs AS j
                      WHERE j.endpoint = u.e AND coalesce(j.tenant, '') = u.t
                        AND j.status = 'IN_QUEUE')
               FROM unnest($1::text[], $2::text[]) AS u (e, t)",
        &[p(&endpoints), p(&tenants)],
    )
    .await?;
    let mut heads = HashMap::new();
    let mut highest = HashMap::new();
    for row in &rows {
        let (endpoint, tenant): (String, String) = (row.get(0), row.get(1));
        heads.insert(endpoint.clone(), row.get::<_, Option<i64>>(2).unwrap_or(0));
        if let Some(top) = row.get::<_, Option<i64>>(3) {
            highest.insert((endpoint, tenant), top);
        }
    }
    Ok(fairness::assign(pairs_of(jobs), &heads, &mut highest))
}

fn pairs_of<'a>(jobs: &'a [&'a NewJob<Json>]) -> impl Iterator<Item = (&'a str, &'a str)> {
    jobs.iter()
        .map(|job| (job.endpoint.as_str(), job.tenant.as_deref().unwrap_or("")))
}
