//! The four pages: one HTML shell (`web/shell.html`) filled in once per
//! page with its title, its navigation entry and the hashed URLs of its
//! stylesheet and scripts. The shell holds the navigation links and a
//! `<noscript>` note, so without JavaScript a person still has links; the
//! figures are filled in by the page's script from the API.

use std::sync::OnceLock;

use axum::http::HeaderMap;
use axum::response::Response;

use super::assets::{cached, digest, url};

const SHELL: &str = include_str!("web/shell.html");

/// A page: its name (the `data-page` its script reads), its title, and
/// the scripts beyond `app.js`.
struct Page {
    name: &'static str,
    title: &'static str,
    scripts: &'static [&'static str],
}

const PAGES: [Page; 4] = [
    Page {
        name: "overview",
        title: "Overview",
        scripts: &["charts.js", "overview.js"],
    },
    Page {
        name: "jobs",
        title: "Jobs",
        scripts: &["jobs.js"],
    },
    Page {
        name: "job",
        title: "Job",
        scripts: &["job.js"],
    },
    Page {
        name: "workers",
        title: "Workers",
        scripts: &["workers.js"],
    },
];

/// A page's HTML and its ETag, made once.
struct Rendered {
    html: String,
    etag: String,
}

fn rendered(index: usize) -> &'static Rendered {
    static RENDERED: OnceLock<Vec<Rendered>> = OnceLock::new();
    &RENDERED.get_or_init(|| PAGES.iter().map(render).collect())[index]
}

fn render(page: &Page) -> Rendered {
    let scripts: String = std::iter::once("app.js")
        .chain(page.scripts.iter().copied())
        .map(|name| format!("<script src=\"{}\" defer></script>\n", url(name)))
        .collect();
    let mut html = SHELL
        .replace("{{title}}", page.title)
        .replace("{{page}}", page.name)
        .replace("{{css}}", &url("style.css"))
        .replace("{{scripts}}", &scripts);
    for other in ["overview", "jobs", "workers"] {
        let current = if other == page.name || (other == "jobs" && page.name == "job") {
            " aria-current=\"page\""
        } else {
            ""
        };
        html = html.replace(&format!("{{{{current-{other}}}}}"), current);
    }
    let etag = format!("\"{}\"", digest(html.as_bytes()));
    Rendered { html, etag }
}

fn page(index: usize, headers: &HeaderMap) -> Response {
    let page = rendered(index);
    cached(
        headers,
        &page.etag,
        "no-cache",
        "text/html; charset=utf-8",
        page.html.as_bytes(),
    )
}

pub(super) async fn overview(headers: HeaderMap) -> Response {
    page(0, &headers)
}

pub(super) async fn jobs(headers: HeaderMap) -> Response {
    page(1, &headers)
}

pub(super) async fn job(headers: HeaderMap) -> Response {
    page(2, &headers)
}

pub(super) async fn workers(headers: HeaderMap) -> Response {
    page(3, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_link_hashed_assets_and_no_inline_script() {
        for index in 0..PAGES.len() {
            let html = &rendered(index).html;
            assert!(!html.contains("{{"), "every placeholder filled: {html}");
            assert!(html.contains(&url("app.js")));
            assert!(!html.contains("<script>"), "no inline script");
        }
    }
}
