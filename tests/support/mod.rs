#![allow(dead_code)]
pub mod endpoint;
pub mod endpoint_routes;
pub mod fake_runpod;
pub mod live;
pub mod postgres;
pub mod tcp_proxy;
pub mod tls;
