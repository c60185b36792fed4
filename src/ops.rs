//! The operator commands' glue in the binary: a runtime, the arguments
//! handed to [`pullthrough::cli`], and the exit code.

use std::process::ExitCode;

use pullthrough::cli::{doctor as doctor_cli, status as status_cli, warm as warm_cli};
use pullthrough::config::Config;

use super::WarmArgs;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `pullthrough status`.
pub fn status(url: String, json: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match runtime().block_on(status_cli::run(&url, json, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pullthrough status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `pullthrough warm`.
pub fn warm(args: WarmArgs) -> ExitCode {
    let mut images = args.images;
    if let Some(file) = &args.file {
        match std::fs::read_to_string(file) {
            Ok(text) => images.extend(warm_cli::read_list(&text)),
            Err(e) => {
                eprintln!("pullthrough warm: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    let platforms = match (args.all_platforms, args.platform) {
        (true, _) => warm_cli::Platforms::All,
        (false, Some(p)) => warm_cli::Platforms::One(p),
        (false, None) => warm_cli::Platforms::host(),
    };
    let mut out = std::io::stdout().lock();
    let warmed = runtime().block_on(warm_cli::run(
        &args.url, &images, platforms, args.pin, &mut out,
    ));
    match warmed {
        Ok(ok) => exit(ok),
        Err(e) => {
            eprintln!("pullthrough warm: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `pullthrough doctor`.
pub fn doctor(config: &Config, only: Option<&str>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match runtime().block_on(doctor_cli::run(config, only, &mut out)) {
        Ok(ok) => exit(ok),
        Err(e) => {
            eprintln!("pullthrough doctor: {e}");
            ExitCode::FAILURE
        }
    }
}
