//! Fair shares between tenants: one tenant's burst of 10,000 jobs must
//! not make another tenant's single job wait behind all of them.
//!
//! Each job gets a *fair rank* when it is queued, and workers take jobs by
//! priority, then fair rank, then queue time, in one ordered scan of the
//! take index `(endpoint, priority DESC, fair_rank, queued_at)`. A job's
//! rank is one more than the highest rank of its tenant's waiting jobs on
//! that endpoint, but never below the rank of the job at the head of the
//! endpoint's queue. So a tenant's jobs are numbered 1, 2, 3, … as rounds,
//! and a tenant with nothing waiting joins the round being served: the
//! workers go round the tenants with waiting jobs, one job each a round.
//! A burst takes many rounds; a single job waits at most one round (one
//! job of each other tenant with jobs waiting). Jobs without a tenant (no
//! `--api-keys`) are one tenant, so their order is first in, first out.
//!
//! Ranks are set at submission: two API processes that submit for the
//! same tenant at the same moment may give equal ranks, which only ties
//! (broken by queue time). A job queued again after a lost attempt keeps
//! its rank, so it runs early in the round it was in.

use std::collections::HashMap;

/// The ranks of `jobs` (endpoint, tenant), in order, given each
/// endpoint's head rank and each tenant's highest waiting rank; the
/// tenants' highest ranks are raised as the jobs are ranked. (A lone
/// PostgreSQL submission works out its rank by this rule in its `INSERT`:
/// `postgres_ops::enqueue`.)
pub(crate) fn assign<'a>(
    jobs: impl IntoIterator<Item = (&'a str, &'a str)>,
    heads: &HashMap<String, i64>,
    highest: &mut HashMap<(String, String), i64>,
) -> Vec<i64> {
    jobs.into_iter()
        .map(|(endpoint, tenant)| {
            let head = heads.get(endpoint).copied().unwrap_or(0);
            let key = (endpoint.to_owned(), tenant.to_owned());
            let rank = highest.get(&key).map_or(head, |top| (top + 1).max(head));
            highest.insert(key, rank);
            rank
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newcomer_joins_the_round_being_served() {
        // "a" has jobs of rounds 5 to 9 waiting, the head is round 5.
        let heads = HashMap::from([("e".to_owned(), 5)]);
        let mut highest = HashMap::from([(("e".to_owned(), "a".to_owned()), 9)]);
        let ranks = assign(
            [("e", "a"), ("e", "b"), ("e", "b"), ("e", "a"), ("f", "a")],
            &heads,
            &mut highest,
        );
        assert_eq!(ranks, [10, 5, 6, 11, 0]);
    }

    #[test]
    fn without_tenants_the_order_is_first_in_first_out() {
        let mut highest = HashMap::new();
        let ranks = assign(
            [("e", ""), ("e", ""), ("e", "")],
            &HashMap::new(),
            &mut highest,
        );
        assert_eq!(ranks, [0, 1, 2]);
    }
}
