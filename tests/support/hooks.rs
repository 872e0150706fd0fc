//! A webhook receiver for tests: a real HTTP server on a free port that
//! records every post it gets (status answered, body) in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

type Posts = Arc<Mutex<Vec<(u16, Value)>>>;

/// A receiver at `url` that answers 500 to its first `failures` posts and
/// 200 to the rest.
pub struct Receiver {
    pub url: String,
    pub posts: Posts,
}

pub async fn receiver(failures: usize) -> Receiver {
    let posts: Posts = Default::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                move |State(posts): State<Posts>, body: axum::Json<Value>| async move {
                    let mut posts = posts.lock().unwrap();
                    let status = if posts.len() < failures { 500 } else { 200 };
                    posts.push((status, body.0));
                    StatusCode::from_u16(status).unwrap()
                },
            ),
        )
        .with_state(posts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, posts }
}

impl Receiver {
    /// How many posts answered 200 each job id got.
    pub fn delivered(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (status, body) in self.posts.lock().unwrap().iter() {
            if *status == 200 {
                let id = body["id"].as_str().unwrap_or_default().to_owned();
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    }
}
