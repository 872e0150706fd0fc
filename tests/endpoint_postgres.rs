//! The endpoint API's route tests on PostgreSQL (the same tests as on SQLite).

mod support;

use support::endpoint::Store;

route_tests!(
    Store::Postgres,
    run_then_status_reports_output_and_times,
    runsync_answers_the_result_or_the_status_when_wait_runs_out,
    stream_returns_unread_partials_in_order,
    progress_shows_as_the_running_jobs_output,
    bad_requests_get_400_with_the_reason,
    input_schema_violations_are_listed_and_nothing_is_queued,
    key_unknown_routes_and_methods_get_json_errors,
    oversized_bodies_get_413,
    cancel_removes_queued_jobs_and_stops_running_ones,
    execution_timeout_ends_timed_out_and_replaces_the_handler,
    ttl_ends_unstarted_jobs_and_retry_runs_them_again,
    handler_errors_are_final_and_crashes_use_attempts,
    purge_drops_queued_jobs_only,
    shutdown_refuses_new_jobs_answers_waiters_and_keeps_the_queue,
    webhooks_are_retried_until_delivered,
    webhooks_survive_a_restart,
);
