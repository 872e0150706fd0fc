//! The endpoint API's route tests on PostgreSQL (the same tests as on SQLite).

mod support;

use support::endpoint::Store;

all_route_tests!(Store::Postgres);
all_platform_tests!(Store::Postgres);
all_tenant_tests!(Store::Postgres);
all_stats_tests!(Store::Postgres);
all_attempt_tests!(Store::Postgres);
