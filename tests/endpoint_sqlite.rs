//! The endpoint API's route tests on the embedded SQLite queue.

mod support;

use support::endpoint::Store;

all_route_tests!(Store::Sqlite);
all_platform_tests!(Store::Sqlite);
all_tenant_tests!(Store::Sqlite);
all_stats_tests!(Store::Sqlite);
all_attempt_tests!(Store::Sqlite);
