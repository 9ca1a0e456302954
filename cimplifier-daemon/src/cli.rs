//! What both binaries, `cimplifierd` and `cimplifierctl`, set up the same
//! way: logging to stderr, the signal that asks them to stop, and how an
//! input is quoted back in a message.

use std::io::IsTerminal;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); colour only
/// when stderr is a terminal, so a log file or journal gets no escape codes.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// `s` quoted for a message, cut to its first `max` bytes (on a character
/// boundary) with its full length said, so that a huge input never makes a
/// huge error.
pub fn quote_capped(s: &str, max: usize) -> String {
    if s.len() <= max {
        return format!("{s:?}");
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

/// Resolves on the first Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quote_capped_cuts_long_input_on_a_char_boundary() {
        assert_eq!(super::quote_capped("a\"b", 10), "\"a\\\"b\"");
        let q = super::quote_capped(&"é".repeat(1000), 5);
        assert_eq!(q, "\"éé\"... (2000 bytes)");
    }
}
