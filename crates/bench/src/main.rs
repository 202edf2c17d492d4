//! `dmuc-bench`: see the library docs for what it measures.

use std::process::ExitCode;

/// sysexits' EX_USAGE.
const EX_USAGE: u8 = 64;

fn main() -> anyhow::Result<ExitCode> {
    let options = match dmuc_bench::Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(dmuc_bench::UsageError::Help) => {
            print!("{}", dmuc_bench::USAGE);
            return Ok(ExitCode::SUCCESS);
        }
        Err(dmuc_bench::UsageError::Invalid(why)) => {
            eprintln!("dmuc-bench: {why}\n\n{}", dmuc_bench::USAGE);
            return Ok(ExitCode::from(EX_USAGE));
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // One thread: the load generator stays on one core and its timestamps
    // come from one clock reader; `run` reports its CPU to show headroom.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let runs = runtime.block_on(dmuc_bench::run(&options))?;
    println!("\n{}", dmuc_bench::summary(&runs));
    Ok(ExitCode::SUCCESS)
}
