//! Judges a saved chaos history (JSON lines, as the chaos run writes them):
//! `cargo run -p rookery-chaos --bin check-history -- FILE`. Prints the
//! report; exits 1 when a guarantee broke, 2 when the file cannot be read.

use std::process::ExitCode;

use rookery_chaos::checker::{Rules, check};
use rookery_chaos::history::History;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: check-history FILE");
        return ExitCode::from(2);
    };
    let history = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| History::from_json_lines(&text).map_err(|e| e.to_string()))
    {
        Ok(history) => history,
        Err(why) => {
            eprintln!("{}: {why}", path.to_string_lossy());
            return ExitCode::from(2);
        }
    };
    let report = check(&history, Rules::default());
    println!("{report}");
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
