//! `fieldline`: see `fieldline --help`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use fieldline::{client, output::Output, up};
use fieldline_proto::v1;
use fieldline_runtime::{shutdown, telemetry};

/// Fieldline: data acquisition and supervisory control for production lines.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  fieldline up                      run the demo line\n  fieldline watch                   follow its values (in another terminal)\n  fieldline config check line.yaml  validate a line document\n\nExit codes: 0 done; 1 the outcome was a failure (problems found, a write refused or not\nread back, a server that cannot be reached); 2 wrong arguments. Output that is cut off\n(`fieldline watch | head`) ends the command quietly with 0."
)]
struct Cli {
    /// How commands print their data: `text` for people, `json` for scripts (one JSON
    /// document per line).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        alias = "format"
    )]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// Simulated devices other than the default Modbus tank.
#[derive(Subcommand)]
enum SimDevice {
    /// An Arduino-style sensor board on a serial port (e.g. one end of a socat pty pair):
    /// answers `READ_SENSORS`, takes `LED,{pin},{state}`.
    #[command(after_help = "Example: fieldline sim serial --port /tmp/ttyB --stream 1s")]
    Serial {
        /// The serial port path.
        #[arg(long)]
        port: PathBuf,
        /// Send the sensor line this often on its own, e.g. `1s`, instead of waiting to be
        /// asked.
        #[arg(long, value_parser = humantime::parse_duration)]
        stream: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline in this process: the demo line by default, or `--config FILE`
    /// against the broker and databases that file names.
    #[command(after_help = "Example: fieldline up --data-dir /tmp/fieldline (stop with Ctrl-C)")]
    Up {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the demo keeps its SQLite database and state.
        #[arg(long, default_value = "fieldline-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:11883")]
        mqtt_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:15020")]
        sim_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:50053")]
        plant_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9180")]
        http_listen: SocketAddr,
    },
    /// Line documents.
    #[command(
        after_help = "Examples:\n  fieldline config check line.yaml\n  fieldline config check --output json line.yaml\n  fieldline config schema > line-config.schema.json"
    )]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Serve the simulated tank over Modbus TCP (or, with `serial`, another device).
    #[command(after_help = "Example: fieldline sim --listen 127.0.0.1:5020")]
    Sim {
        #[command(subcommand)]
        device: Option<SimDevice>,
        #[arg(long, default_value = "127.0.0.1:5020")]
        listen: SocketAddr,
        /// Process model step.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        step: Duration,
    },
    /// Print the latest value of tags from the MES API.
    #[command(after_help = "Example: fieldline read --device tank temperature level")]
    Read(Query),
    /// Print the latest values, then every change, from the MES API.
    #[command(after_help = "Example: fieldline watch --output json | head -5")]
    Watch(Query),
    /// Write one tag through the line's safe write path; prints the outcome (exit 1 unless
    /// written).
    #[command(
        after_help = "Example: fieldline write demo/tank/setpoint 45.5 --reason \"recipe B\""
    )]
    Write {
        #[arg(
            long,
            default_value = "http://127.0.0.1:50053",
            env = "FIELDLINE_SERVER"
        )]
        server: String,
        /// Tag path `{line}/{device}/{tag}`.
        tag: String,
        /// `true`/`false`, an integer or a number; `--string` writes it as text.
        value: String,
        #[arg(long)]
        string: bool,
        /// Who asks for the write (recorded in the audit trail).
        #[arg(long, env = "USER")]
        user: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Give up when not written within this time.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        deadline: Duration,
        /// The idempotency key; a new one when absent.
        #[arg(long)]
        id: Option<String>,
    },
    /// OPC UA servers: browse one for its variables.
    #[command(
        after_help = "Example: fieldline opcua browse opc.tcp://127.0.0.1:4840/ --trust server.der > tags.yaml"
    )]
    Opcua {
        #[command(subcommand)]
        command: OpcuaCommand,
    },
    /// Alarms: list them, follow them, or act on one.
    #[command(
        after_help = "Examples:\n  fieldline alarms list --active\n  fieldline alarms ack demo/tank/temp-high --comment \"valve checked\"\n  fieldline alarms shelve demo/tank/temp-high --for 2h"
    )]
    Alarms {
        #[arg(
            long,
            global = true,
            default_value = "http://127.0.0.1:50053",
            env = "FIELDLINE_SERVER"
        )]
        server: String,
        #[command(subcommand)]
        command: Option<AlarmCommand>,
    },
}

#[derive(Subcommand)]
enum AlarmCommand {
    /// Every alarm with its state (the default).
    List {
        /// Only alarms that are not normal.
        #[arg(long)]
        active: bool,
        #[arg(long, default_value = "")]
        device: String,
    },
    /// Print every alarm transition as it happens.
    Watch {
        #[arg(long, default_value = "")]
        device: String,
    },
    Ack(client::AlarmArgs),
    /// Shelve an alarm for a while.
    Shelve {
        #[command(flatten)]
        args: client::AlarmArgs,
        #[arg(long, value_parser = humantime::parse_duration)]
        r#for: Duration,
    },
    Unshelve(client::AlarmArgs),
    /// Take an alarm out of service.
    Disable(client::AlarmArgs),
    /// Return an alarm to service.
    Enable(client::AlarmArgs),
}

#[derive(Subcommand)]
enum OpcuaCommand {
    /// List the variables below Objects and print a `tags:` section for a line document.
    Browse(fieldline::opcua::BrowseArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a line document; prints every problem with its path and line.
    ///
    /// Example: `fieldline config check line.yaml` (exit code 0: valid, 1: problems found)
    ///
    /// With `--output json` (or `--format json`) it prints one document with every problem,
    /// for editors and CI.
    Check { file: PathBuf },
    /// Print the JSON Schema of line documents, for editors and the ProductionLine resource.
    ///
    /// Example: `fieldline config schema > line-config.schema.json`
    Schema,
}

#[derive(clap::Args)]
struct Query {
    /// PlantService address.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50053",
        env = "FIELDLINE_SERVER"
    )]
    server: String,
    #[arg(long, default_value = "")]
    line: String,
    #[arg(long, default_value = "")]
    device: String,
    /// Tag names; all when none are given.
    tags: Vec<String>,
}

impl Query {
    fn split(self) -> (String, v1::TagFilter) {
        (
            self.server,
            v1::TagFilter {
                line: self.line,
                device: self.device,
                tags: self.tags,
            },
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match run(Cli::parse()).await {
        // The reader of the output went away (`fieldline watch | head`): done.
        Err(e) if fieldline::output::is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let output = cli.output;
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => Ok(check(&file, cli.output)),
        Command::Config {
            command: ConfigCommand::Schema,
        } => {
            fieldline::output::print(&fieldline_core::config::schema::line_schema_json())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up {
            config,
            data_dir,
            mqtt_listen,
            sim_listen,
            plant_listen,
            http_listen,
        } => {
            telemetry::init();
            let stop = shutdown::on_signal();
            let options = up::UpOptions {
                config,
                data_dir,
                mqtt_listen,
                sim_listen,
                plant_listen,
                http_listen,
            };
            let running = up::start(&options, stop).await?;
            let _ = fieldline::output::print(&format!("{}\n", running.endpoints.banner()));
            running.wait().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim {
            device: Some(SimDevice::Serial { port, stream }),
            ..
        } => {
            telemetry::init();
            let stop = shutdown::on_signal();
            let config = fieldline_sim::SerialSimConfig {
                port: port.clone(),
                stream,
            };
            let (_, board) = fieldline_sim::serve_serial(config, stop)?;
            let _ = fieldline::output::print(&format!(
                "simulated sensor board on {}\n",
                port.display()
            ));
            let _ = board.await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim {
            device: None,
            listen,
            step,
        } => {
            telemetry::init();
            let stop = shutdown::on_signal();
            let state = fieldline_sim::SimState::new();
            fieldline_sim::tank::init(&state);
            let (addr, server) =
                fieldline_sim::serve_modbus_tcp(listen, state.clone(), stop.clone()).await?;
            let _ =
                fieldline::output::print(&format!("simulated tank serving Modbus TCP on {addr}\n"));
            fieldline_sim::tank::run(state, step, stop).await;
            let _ = server.await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Read(q) => {
            let (server, filter) = q.split();
            client::read(server, filter, output).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch(q) => {
            let (server, filter) = q.split();
            client::watch(server, filter, output).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Write {
            server,
            tag,
            value,
            string,
            user,
            reason,
            deadline,
            id,
        } => {
            let value = client::parse_value(&value, string);
            let written = client::write(
                server,
                client::WriteRequest {
                    tag,
                    value,
                    user,
                    reason,
                    deadline,
                    id,
                },
                output,
            )
            .await?;
            Ok(if written {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Opcua {
            command: OpcuaCommand::Browse(args),
        } => {
            fieldline::opcua::browse(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Alarms { server, command } => {
            match command.unwrap_or(AlarmCommand::List {
                active: false,
                device: String::new(),
            }) {
                AlarmCommand::List { active, device } => {
                    client::list_alarms(server, device, active, output).await?
                }
                AlarmCommand::Watch { device } => {
                    client::watch_alarms(server, device, output).await?
                }
                AlarmCommand::Ack(a) => {
                    client::alarm_action(server, "ack", a, None, output).await?
                }
                AlarmCommand::Shelve { args, r#for } => {
                    client::alarm_action(server, "shelve", args, Some(r#for), output).await?
                }
                AlarmCommand::Unshelve(a) => {
                    client::alarm_action(server, "unshelve", a, None, output).await?
                }
                AlarmCommand::Disable(a) => {
                    client::alarm_action(server, "disable", a, None, output).await?
                }
                AlarmCommand::Enable(a) => {
                    client::alarm_action(server, "enable", a, None, output).await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(file: &std::path::Path, output: Output) -> ExitCode {
    let result = fieldline_runtime::config::load(file);
    if output == Output::Json {
        let problems: Vec<serde_json::Value> = match &result {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .0
                .iter()
                .map(
                    |e| serde_json::json!({ "path": e.path, "line": e.line, "message": e.message }),
                )
                .collect(),
        };
        let ok = problems.is_empty();
        let report = serde_json::json!({ "file": file.display().to_string(), "ok": ok, "problems": problems });
        // A reader that went away needs nothing more; the exit code still says the outcome.
        let _ = fieldline::output::print(&format!("{report}\n"));
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match result {
        Ok(config) => {
            let tags: usize = config.devices.iter().map(|d| d.tags().len()).sum();
            let _ = fieldline::output::print(&format!(
                "{}: ok (line {}, {} devices, {tags} tags)\n",
                file.display(),
                config.line,
                config.devices.len()
            ));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                match e.line {
                    Some(line) => eprintln!("{}:{line}: {e}", file.display()),
                    None => eprintln!("{}: {e}", file.display()),
                }
            }
            eprintln!("{} problem(s) found", errors.0.len());
            ExitCode::FAILURE
        }
    }
}
