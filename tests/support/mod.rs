#![allow(dead_code)]
pub mod fake_runpod;
pub mod postgres;
