//! `vfio-sidecar`: serve a VFIO device or a built-in model over vfio-user.

use clap::Parser;
use vfio_sidecar::cli::{init_logging, run_bind, run_dt, run_list, Cli, Command};

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let r = match cli.command {
        Command::Serve(args) => vfio_sidecar::server::run_serve(args).map_err(|e| e.to_string()),
        Command::Dt(args) => run_dt(&args).map_err(|e| e.to_string()),
        Command::Probe(args) => vfio_sidecar::probe::run_probe(&args).map_err(|e| e.to_string()),
        Command::List(args) => run_list(&args).map_err(|e| e.to_string()),
        Command::Bind(args) => run_bind(&args).map_err(|e| e.to_string()),
    };
    if let Err(e) = r {
        eprintln!("vfio-sidecar: {e}");
        std::process::exit(1);
    }
}
