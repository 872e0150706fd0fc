//! Payloads of any size through S3-compatible object storage: the store's
//! flags ([`config`]), its client ([`store`]) and what the runner does with
//! large outputs ([`offload`]).
//!
//! A layer of its own between the runner and the leaves: the runner and
//! the sources import it; it imports only leaves (`error`, `backoff`,
//! `json`, `units`).

pub mod config;
pub mod offload;
pub mod store;
