//! Payloads of any size through S3-compatible object storage: the store's
//! flags ([`config`]), its client ([`store`]), what the runner does with
//! large outputs and a handler's files ([`offload`]), each job's
//! scratch directory ([`job_dir`]), uploads waiting in the spool for the
//! store to come back ([`pending`]), and inputs given by reference
//! ([`inputs`], through [`fetch`]'s checks for URLs), and the objects
//! deleted with their jobs, and uploaded inputs past their lifetime
//! ([`retention`]).
//!
//! A layer of its own between the runner and the leaves: the runner and
//! the sources import it; it imports only leaves (`error`, `backoff`,
//! `json`, `units`).

pub mod config;
pub mod fetch;
pub mod inputs;
pub mod job_dir;
pub mod offload;
pub mod pending;
pub mod retention;
pub(crate) mod sink;
pub mod store;
