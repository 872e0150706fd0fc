//! The self-hosted endpoint: RunPod's endpoint API served over jobpipe's
//! own queue, on one machine (SQLite) or many (PostgreSQL).
//!
//! * [`config`]: its flags (`--serve-api`, `--queue`, `--api-key`, ...) and
//!   their validation.
//! * [`keys`]: the API keys file (`--api-keys`): tenants, their endpoints,
//!   roles and rates.
//! * [`settings`]: the per-endpoint settings file (`--endpoints`): each
//!   endpoint's input schema, attempts, ttl, timeout and retention.
//! * [`queue`]: the [`queue::Queue`] trait and its stores, registered by URL
//!   scheme in [`queue::stores`].
//! * [`api`]: the HTTP routes (`/run`, `/runsync`, `/status`, ...).
//! * [`rollup`]: the per-minute figures of the jobs that ended, behind
//!   `/stats` and the dashboard's charts.
//! * [`dashboard`]: the web pages under `/dashboard`, reading and acting
//!   through those routes.
//! * [`source`]: the job source that runs the queue's jobs in this
//!   process's handler pool (and serves the API when asked), with
//!   [`sink`] carrying each job's updates and result back to the queue,
//!   and [`upkeep`] sweeping the queue once a second.
//! * [`webhook`]: posts a finished job's result to its webhook.

pub mod api;
pub mod config;
pub mod dashboard;
pub mod keys;
pub mod queue;
pub mod rollup;
pub mod settings;
mod sink;
pub mod source;
mod upkeep;
pub mod webhook;
