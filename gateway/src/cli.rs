//! The `edgegate` command line. `main.rs` only calls [`main`].

use crate::state::{machine_defaults, ConfigSource, Shared};
use clap::{Args, Parser, Subcommand};
use policies::raw::{HealthCheckConfig, ListenerConfig, RawConfig, RouteConfig, UpstreamConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// The embedded default config of `edgegate demo`.
pub const DEMO_CONFIG: &str = include_str!("../../policies/examples/demo.toml");

#[derive(Parser, Debug)]
#[command(
    name = "edgegate",
    version,
    about = "Edge gateway: a Pingora reverse proxy for anycast PoPs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// Run from this TOML config file.
    #[arg(long, short = 'c', conflicts_with_all = ["upstream", "listen"])]
    config: Option<PathBuf>,
    /// Drop-in mode: proxy everything to this backend (`http://host:port`);
    /// repeat for round-robin with health checks.
    #[arg(long, value_name = "URL")]
    upstream: Vec<String>,
    /// Drop-in mode: public listener address (repeatable). Default `0.0.0.0:8080`.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Drop-in mode: admin listener address.
    #[arg(long, value_name = "ADDR", default_value = policies::DEFAULT_ADMIN)]
    admin: String,
    /// Drop-in mode: PoP name (default: host name).
    #[arg(long)]
    pop: Option<String>,
    /// Drop-in mode: worker threads (default: CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Drop-in mode: HTTP health-check path for the backends (default: TCP connect checks).
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    /// Drop-in mode: log format, `text` or `json`.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Drop-in mode: how long readyz fails before shutdown on SIGTERM or drain (e.g. `10s`).
    #[arg(long, value_name = "DURATION")]
    drain_window: Option<String>,
    /// Drop-in mode: cache what the origin marks cacheable, in this much memory (e.g. `256MiB`).
    #[arg(long, value_name = "SIZE")]
    cache: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file; exit 0 when valid, else print file:line:column and the key.
    Check {
        /// The config file.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Also load what the config names, as a start would: certificates
        /// and keys, filter components (compiled and instantiated), key and
        /// token files, backend addresses. Exit 1 when any fails.
        #[arg(long)]
        load: bool,
    },
    /// Run a built-in demo origin and edgegate in front of it, from the embedded default config.
    Demo {
        /// Public listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listener.
        #[arg(long, default_value = policies::DEFAULT_ADMIN)]
        admin: String,
        /// Where the demo origin listens.
        #[arg(long, default_value = "127.0.0.1:9000")]
        origin: String,
    },
    /// Work with filter components: test one locally, scaffold a new one.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
    /// Make a self-signed development certificate (never for production).
    DevCert {
        /// Output directory.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// DNS names (first one names the files).
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum FilterCommand {
    /// Run a filter (or a route's whole chain) on one request, with the
    /// production host: same limits, imports, key sets and buckets.
    Test {
        /// A component to test on its own.
        #[arg(long, conflicts_with = "config")]
        component: Option<PathBuf>,
        /// With --component: a TOML file with `[filter]` (the keys of a
        /// `[[routes.filters]]` entry: config, timeout, memory, rate_limits,
        /// key_sets...) and any `[rate_limits.*]` / `[key_sets.*]` it uses.
        #[arg(long, requires = "component")]
        filter_config: Option<PathBuf>,
        /// A full edgegate config: test the chain of `--route`.
        #[arg(long, requires = "route")]
        config: Option<PathBuf>,
        /// With --config: the route whose filters run.
        #[arg(long)]
        route: Option<String>,
        /// The request: a raw HTTP/1.1 head (request line, headers, blank line).
        #[arg(long)]
        request: PathBuf,
        /// Fail (exit 1) unless the outcome is this: `continue`, `respond:STATUS` or `fail`.
        #[arg(long)]
        expect: Option<String>,
    },
    /// Create a filter crate that builds for wasm32-wasip2 and passes its test.
    New {
        /// Crate name (letters, digits, `-`, `_`).
        name: String,
        /// Parent directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// `[filter]` and its grants, for `edgegate filter test --component`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LocalFilterFile {
    #[serde(default)]
    filter: policies::raw::FilterConfig,
    #[serde(default)]
    rate_limits: std::collections::BTreeMap<String, policies::raw::RateLimitConfig>,
    #[serde(default)]
    key_sets: std::collections::BTreeMap<String, policies::raw::KeySetConfig>,
}

fn local_config(
    component: &std::path::Path,
    filter_config: Option<&std::path::Path>,
) -> Result<policies::Config, String> {
    let file: LocalFilterFile = match filter_config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => LocalFilterFile::default(),
    };
    let mut filter = file.filter;
    filter.module = None;
    filter.path = Some(
        std::path::absolute(component)
            .map_err(|e| e.to_string())?
            .display()
            .to_string(),
    );
    let raw = RawConfig {
        listeners: vec![ListenerConfig {
            name: None,
            listen: "127.0.0.1:1".into(),
            tls: None,
        }],
        upstreams: [(
            "local".to_string(),
            UpstreamConfig {
                backends: vec!["127.0.0.1:1".into()],
                ..Default::default()
            },
        )]
        .into(),
        routes: vec![RouteConfig {
            name: "local".into(),
            upstream: "local".into(),
            filters: vec![filter],
            ..Default::default()
        }],
        rate_limits: file.rate_limits,
        key_sets: file.key_sets,
        ..Default::default()
    };
    let origin =
        filter_config.map_or_else(|| "<filter test>".to_string(), |p| p.display().to_string());
    policies::from_raw(&raw, &origin, &machine_defaults()).map_err(|e| e.to_string())
}

fn filter_test(
    component: Option<PathBuf>,
    filter_config: Option<PathBuf>,
    config: Option<PathBuf>,
    route: Option<String>,
    request: PathBuf,
    expect: Option<String>,
) -> ExitCode {
    let run = || -> Result<crate::filter_host::local::Report, String> {
        let (config, route) = match (component, config) {
            (Some(c), None) => (
                local_config(&c, filter_config.as_deref())?,
                "local".to_string(),
            ),
            (None, Some(file)) => (
                policies::load_file(&file, &machine_defaults()).map_err(|e| e.to_string())?,
                route.unwrap_or_default(),
            ),
            _ => return Err("give --component FILE, or --config FILE --route NAME".into()),
        };
        let raw =
            std::fs::read_to_string(&request).map_err(|e| format!("{}: {e}", request.display()))?;
        let req = crate::filter_host::local::parse_request(&raw)
            .map_err(|e| format!("{}: {e}", request.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(crate::filter_host::local::run(&config, &route, req))
    };
    match run() {
        Err(e) => {
            eprintln!("edgegate: {e}");
            ExitCode::from(2)
        }
        Ok(report) => {
            print!("{}", report.text);
            use crate::filter_host::local::Verdict;
            let matches = match expect.as_deref() {
                None => true,
                Some("continue") => report.verdict == Verdict::Continue,
                Some("fail") => matches!(report.verdict, Verdict::Failed(_)),
                Some(other) => match other
                    .strip_prefix("respond:")
                    .and_then(|s| s.parse::<u16>().ok())
                {
                    Some(status) => report.verdict == Verdict::Respond(status),
                    None => {
                        eprintln!("edgegate: --expect takes continue, respond:STATUS or fail");
                        return ExitCode::from(2);
                    }
                },
            };
            if matches {
                if let Some(e) = expect {
                    println!("expected `{e}`: ok");
                }
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "expected `{}`, got {:?}",
                    expect.unwrap_or_default(),
                    report.verdict
                );
                ExitCode::FAILURE
            }
        }
    }
}

/// `host:port` from `http://host:port[/]`, `https://...` or bare `host:port`.
fn parse_upstream(url: &str) -> Result<(String, Option<String>), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if url.contains("://") {
        return Err(format!(
            "`{url}`: only http:// and https:// upstreams are supported"
        ));
    } else {
        (false, url)
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(format!(
            "`{url}`: an upstream is scheme://host:port, without a path"
        ));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let sni = tls.then(|| {
        authority
            .rsplit_once(':')
            .map_or(authority.clone(), |(h, _)| h.to_string())
    });
    Ok((authority, sni))
}

/// The config of drop-in mode, built from flags and validated like a file.
fn drop_in_config(args: &RunArgs) -> Result<RawConfig, String> {
    if args.upstream.is_empty() {
        return Err("give --config FILE, or --upstream URL for drop-in mode (see --help)".into());
    }
    let mut backends = Vec::new();
    let mut sni = None;
    for u in &args.upstream {
        let (addr, s) = parse_upstream(u)?;
        if s.is_some() {
            sni = s;
        }
        backends.push(addr);
    }
    let listens = if args.listen.is_empty() {
        vec!["0.0.0.0:8080".to_string()]
    } else {
        args.listen.clone()
    };
    let mut raw = RawConfig::default();
    raw.pop.name = args.pop.clone();
    raw.server.threads = args.threads;
    raw.server.drain_window = args.drain_window.clone();
    raw.log.format = args.log_format.clone();
    raw.admin.listen = Some(args.admin.clone());
    raw.listeners = listens
        .into_iter()
        .map(|l| ListenerConfig {
            name: None,
            listen: l,
            tls: None,
        })
        .collect();
    raw.upstreams.insert(
        "default".into(),
        UpstreamConfig {
            backends,
            tls_sni: sni,
            health_check: Some(match &args.health_path {
                Some(p) => HealthCheckConfig {
                    path: Some(p.clone()),
                    ..Default::default()
                },
                None => HealthCheckConfig {
                    kind: Some("tcp".into()),
                    ..Default::default()
                },
            }),
            ..Default::default()
        },
    );
    raw.cache.size = args.cache.clone();
    raw.routes = vec![RouteConfig {
        name: "default".into(),
        upstream: "default".into(),
        cache: args
            .cache
            .as_ref()
            .map(|_| policies::raw::RouteCacheConfig::default()),
        ..Default::default()
    }];
    Ok(raw)
}

fn demo_config(listen: &str, admin: &str, origin: &str) -> Result<RawConfig, String> {
    let mut raw = policies::parse_raw(DEMO_CONFIG, std::path::Path::new("<embedded demo.toml>"))
        .map_err(|e| e.to_string())?;
    if let Some(l) = raw.listeners.first_mut() {
        l.listen = listen.to_string();
    }
    raw.admin.listen = Some(admin.to_string());
    for up in raw.upstreams.values_mut() {
        up.backends = vec![origin.to_string()];
    }
    Ok(raw)
}

/// Sets up `tracing` for the config's format and level.
pub fn init_logging(log: &policies::Log) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match log.format {
        policies::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        policies::LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already set up: {e}");
    }
    crate::logout::enable();
}

fn serve(source: ConfigSource) -> ExitCode {
    let shared = match Shared::load(source, machine_defaults()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("edgegate: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&shared.current().config.log);
    let served = crate::server::run(
        shared,
        crate::server::RunOptions {
            handle_signals: true,
            stop: None,
            force_work_stealing: false,
        },
    );
    crate::logout::flush();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config, load }) => {
            match policies::load_file(&config, &machine_defaults()) {
                Ok(_) if load => {
                    match Shared::load(ConfigSource::File(config.clone()), machine_defaults()) {
                        Ok(shared) => {
                            let g = shared.current();
                            let filters: usize =
                                g.route_filters.iter().map(|c| c.filters.len()).sum();
                            println!(
                                "{}: ok, loaded ({} listeners, {} upstream groups, {} routes, {} filters)",
                                config.display(),
                                g.config.listeners.len(),
                                g.config.upstreams.len(),
                                g.config.routes.routes().len(),
                                filters
                            );
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("{}: {e:#}", config.display());
                            ExitCode::FAILURE
                        }
                    }
                }
                Ok(c) => {
                    println!(
                        "{}: ok ({} listeners, {} upstream groups, {} routes)",
                        config.display(),
                        c.listeners.len(),
                        c.upstreams.len(),
                        c.routes.routes().len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Demo {
            listen,
            admin,
            origin,
        }) => {
            let raw = match demo_config(&listen, &admin, &origin) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("edgegate: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = crate::demo::spawn_origin(&origin) {
                eprintln!("edgegate: cannot start the demo origin on {origin}: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "demo origin on http://{origin}\nedgegate on http://{listen}  (try: curl -i http://{listen}/ ; curl -i http://{listen}/static/a twice: Cache-Status)\nadmin on http://{admin}  (try: curl http://{admin}/readyz, /status, /metrics)"
            );
            serve(ConfigSource::Inline {
                raw: Box::new(raw),
                origin: "<embedded demo.toml>".into(),
            })
        }
        Some(Command::Filter { command }) => match command {
            FilterCommand::Test {
                component,
                filter_config,
                config,
                route,
                request,
                expect,
            } => filter_test(component, filter_config, config, route, request, expect),
            FilterCommand::New { name, dir } => {
                match crate::filter_host::scaffold::create(&dir, &name) {
                    Ok(path) => {
                        println!(
                        "created {}
next:
  cd {}
  cargo build --release
  edgegate filter test --component target/wasm32-wasip2/release/{}.wasm --request tests/request.http --expect respond:403",
                        path.display(),
                        path.display(),
                        name.replace('-', "_")
                    );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("edgegate: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        },
        Some(Command::DevCert { out, names }) => {
            match crate::tls::write_dev_certificate(&out, &names) {
                Ok((cert, key)) => {
                    println!(
                        "certificate: {}\nkey:         {}",
                        cert.display(),
                        key.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("edgegate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            let source = match &cli.run.config {
                Some(path) => ConfigSource::File(path.clone()),
                None => match drop_in_config(&cli.run) {
                    Ok(raw) => ConfigSource::Inline {
                        raw: Box::new(raw),
                        origin: "<command line>".into(),
                    },
                    Err(e) => {
                        eprintln!("edgegate: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            serve(source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:9000"),
            Ok(("127.0.0.1:9000".into(), None))
        );
        assert_eq!(
            parse_upstream("127.0.0.1:9000/"),
            Ok(("127.0.0.1:9000".into(), None))
        );
        assert_eq!(
            parse_upstream("https://origin.test"),
            Ok(("origin.test:443".into(), Some("origin.test".into())))
        );
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://x:1/path").is_err());
    }

    #[test]
    fn drop_in_is_a_valid_config() {
        let args = RunArgs {
            upstream: vec![
                "http://127.0.0.1:9000".into(),
                "http://127.0.0.1:9001".into(),
            ],
            listen: vec!["127.0.0.1:8080".into()],
            admin: "127.0.0.1:9901".into(),
            ..Default::default()
        };
        let raw = drop_in_config(&args).unwrap();
        let c = policies::from_raw(&raw, "<command line>", &machine_defaults()).unwrap();
        assert_eq!(c.upstreams["default"].backends.len(), 2);
        assert_eq!(c.routes.find("anything", "/x"), Some(0));
        assert!(c.routes.routes()[0].cache.is_none());
        let args = RunArgs {
            cache: Some("64MiB".into()),
            ..args
        };
        let c = policies::from_raw(
            &drop_in_config(&args).unwrap(),
            "<command line>",
            &machine_defaults(),
        )
        .unwrap();
        assert_eq!(c.cache.size, 64 << 20);
        assert!(c.routes.routes()[0].cache.is_some());
    }

    #[test]
    fn demo_config_is_valid() {
        let raw = demo_config("127.0.0.1:8080", "127.0.0.1:9901", "127.0.0.1:9000").unwrap();
        policies::from_raw(&raw, "demo", &machine_defaults()).unwrap();
    }
}
