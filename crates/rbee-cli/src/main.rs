//! `rbee-node`: the one command of rbee. Thin by design: parsing, output and exit codes here,
//! everything else in the library crates.

mod chat;
mod infer;
mod models;
mod node;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// jemalloc, not glibc's malloc: glibc keeps what a thread frees in that thread's arena once
/// its mmap threshold has risen, so every model load left most of its buffers resident after
/// unload and RSS grew with each load/unload cycle (`unloading_a_model_gives_its_memory_back_
/// every_time` in `tests/tests/node.rs`). jemalloc's background thread returns freed pages to
/// the OS within its decay time (seconds), whichever thread freed them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "rbee-node",
    version,
    about = "A private peer-to-peer pool for LLM inference"
)]
struct Cli {
    /// Where models and the catalog live (default: $XDG_DATA_HOME/rbee).
    #[arg(long, global = true, env = "RBEE_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Config file (default: $XDG_CONFIG_HOME/rbee/config.toml).
    #[arg(long, global = true, env = "RBEE_CONFIG")]
    config: Option<PathBuf>,

    /// HuggingFace endpoint (default: HF_ENDPOINT, else the public hub, huggingface.co).
    #[arg(long, global = true)]
    hf_endpoint: Option<String>,

    /// Token for gated or private HuggingFace repos (default: HF_TOKEN); sent to the hub only.
    #[arg(long, global = true)]
    hf_token: Option<String>,

    /// HuggingFace home: pulls download into DIR/hub (default: HF_HOME, else ~/.cache/huggingface).
    #[arg(long, global = true, value_name = "DIR")]
    hf_home: Option<PathBuf>,

    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RBEE_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the models on this node.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Start a node: serve the API and the models in the data dir until SIGTERM/Ctrl-C.
    Join(Box<node::JoinArgs>),
    /// Show the running local node: devices, memory, models and their state.
    Status,
    /// Run one prompt (through the local node if one is running, else in this process).
    Infer(infer::InferArgs),
    /// Chat with a model: interactive (history, `"""` multi-line, `/bye`, `/set system`),
    /// or one prompt given after the model's name.
    Run(chat::RunArgs),
    /// List the models the running node holds in memory.
    Ps,
    /// Unload a model from the running node's memory (it stays on disk).
    Stop {
        /// The model's name, alias or content id.
        model: String,
    },
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The pool: make a key.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Show the peers the running node sees: free memory, models, latency.
    Peers,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Print a new random pool key; give it to every node of the pool.
    New,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (file, then RBEE_* variables, then flags).
    Show,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A log that cannot be written (stderr redirected to a full disk) must not take the
    // node down: by default the subscriber reports such an error with `eprint!`, which
    // panics when stderr fails too — seen as a pull's writer thread panicking on ENOSPC.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Freed memory goes back to the OS on its own, not only when this process allocates.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::debug!("jemalloc background purging is off: {e}");
    }
    let hf = node::HfFlags {
        endpoint: cli.hf_endpoint.clone(),
        token: cli.hf_token.clone(),
        home: cli.hf_home.clone(),
    };
    let result = node::load_config(cli.config.as_ref(), cli.data_dir.clone(), hf).and_then(
        |config| match cli.command {
            Command::Models(cmd) => models::run(&config, cmd),
            Command::Infer(args) => infer::run(&config, args),
            Command::Run(args) => chat::run(&config, args),
            Command::Ps => chat::ps(&config),
            Command::Stop { model } => chat::stop(&config, &model),
            Command::Join(args) => node::join(config, *args),
            Command::Status => node::status(&config),
            Command::Pool(PoolCommand::New) => node::pool_new(),
            Command::Peers => node::peers(&config),
            Command::Config(ConfigCommand::Show) => {
                node::show_config(&config);
                Ok(())
            }
        },
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line the user can act on; the chain of causes joined with ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
