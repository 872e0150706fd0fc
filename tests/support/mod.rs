#![allow(dead_code)]
pub mod fake_runpod;
pub mod live;
pub mod postgres;
