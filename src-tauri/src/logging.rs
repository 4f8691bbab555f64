//! Logs go through the core's logging setup so the tray and the CLI write the same JSON
//! lines into `<data dir>/logs/`.

use crate::settings::TrayOptions;

/// Keep the returned guard for the life of the process: it flushes the log file on drop.
pub fn init(options: &TrayOptions) -> Option<impl Sized> {
    let log_options = edge_agent::logging::LogOptions {
        data_dir: options.agent.data_dir.clone(),
        // Useful when started from a terminal; invisible otherwise.
        stderr: true,
        default_filter: "info".to_owned(),
    };
    match edge_agent::logging::init(log_options) {
        Ok(guard) => Some(guard),
        Err(err) => {
            // Not fatal: the app works without a log file.
            eprintln!("edge-agent-tray: logging disabled: {err}");
            None
        }
    }
}
