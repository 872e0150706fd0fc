//! Unix signals as a stream of shutdown requests.
//!
//! SIGTERM and SIGINT ask for a stop: the supervisor drains on the first and
//! forces on the second. SIGQUIT asks to stop now. SIGUSR1 asks for a
//! one-screen dump of the worker's state in the log (phase, slots, jobs in
//! flight with their age, undelivered results). SIGHUP and SIGUSR2 are
//! logged and otherwise ignored, so a closed terminal or a stray signal
//! never takes a worker down (their default action would end the process
//! without a result for the job in flight). Nothing is forwarded to
//! handlers: they are stopped by the supervisor's own procedure.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// What a signal asks of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// SIGTERM or SIGINT: drain the first time, force the second.
    Stop,
    /// SIGQUIT: force at once.
    Quit,
    /// SIGUSR1: not a stop; log the worker's state.
    StateDump,
}

/// Installs the signal handlers and returns the stream of requests.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<ShutdownRequest>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                Some(()) = term.recv() => {
                    tracing::info!("received SIGTERM");
                    ShutdownRequest::Stop
                }
                Some(()) = int.recv() => {
                    tracing::info!("received SIGINT");
                    ShutdownRequest::Stop
                }
                Some(()) = quit.recv() => {
                    tracing::info!("received SIGQUIT");
                    ShutdownRequest::Quit
                }
                Some(()) = hup.recv() => {
                    tracing::info!("received SIGHUP; ignored (send SIGTERM to stop the worker)");
                    continue;
                }
                Some(()) = usr1.recv() => ShutdownRequest::StateDump,
                Some(()) = usr2.recv() => {
                    tracing::info!("received SIGUSR2; ignored (SIGUSR1 logs the worker's state, SIGTERM stops it)");
                    continue;
                }
            };
            if tx.send(request).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
