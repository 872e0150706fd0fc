//! What `jobpipe submit --wait` shows on stderr while it follows a job: on
//! a terminal, a spinner with the job's status and latest progress update
//! (indicatif), redrawn in place; otherwise (a log, a CI job) one plain
//! line per change, `job ID: STATUS` and `progress: JSON`, so nothing is
//! redrawn into a file. stdout carries only the job's JSON.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::{compact, print_json};

/// How often the spinner turns.
const TICK: Duration = Duration::from_millis(120);

pub(crate) struct Display {
    id: String,
    kind: Kind,
    status: Option<String>,
    progress: Option<String>,
}

enum Kind {
    Bar(ProgressBar),
    Lines,
}

impl Display {
    /// A display for job `id`: the spinner when stderr is a terminal.
    pub fn new(id: &str) -> Display {
        let kind = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
                    .expect("the template is valid"),
            );
            bar.enable_steady_tick(TICK);
            Kind::Bar(bar)
        } else {
            Kind::Lines
        };
        Display {
            id: id.to_owned(),
            kind,
            status: None,
            progress: None,
        }
    }

    /// The job's status and, while it runs, its latest progress update
    /// (JSON text).
    pub fn update(&mut self, status: &str, progress: Option<&str>) {
        let progress = progress.map(compact);
        let new_status = self.status.as_deref() != Some(status);
        let new_progress = progress.is_some() && progress != self.progress;
        if new_status {
            self.status = Some(status.to_owned());
        }
        if new_progress {
            self.progress = progress;
        }
        match &self.kind {
            Kind::Bar(bar) => {
                let mut message = format!("job {}: {status}", self.id);
                if let Some(progress) = &self.progress {
                    message.push_str("  ");
                    message.push_str(progress);
                }
                bar.set_message(message);
            }
            Kind::Lines => {
                if new_status {
                    eprintln!("job {}: {status}", self.id);
                }
                if let (true, Some(progress)) = (new_progress, &self.progress) {
                    eprintln!("progress: {progress}");
                }
            }
        }
    }

    /// A line on stderr (a connection problem, say) that stays in view.
    pub fn note(&self, text: &str) {
        match &self.kind {
            Kind::Bar(bar) => bar.println(text),
            Kind::Lines => eprintln!("{text}"),
        }
    }

    /// Prints JSON on stdout without tearing the spinner, which may share
    /// the terminal.
    pub fn print(&self, json: &str) {
        match &self.kind {
            Kind::Bar(bar) => bar.suspend(|| print_json(json)),
            Kind::Lines => print_json(json),
        }
    }

    /// Replaces the spinner with a line of the job's last status, so that
    /// what follows starts on a clean line and the job's id stays in view.
    pub fn finish(&self) {
        if let Kind::Bar(bar) = &self.kind {
            if bar.is_finished() {
                return;
            }
            bar.finish_and_clear();
            if let Some(status) = &self.status {
                eprintln!("job {}: {status}", self.id);
            }
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.finish();
    }
}
