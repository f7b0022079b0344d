//! `lb`: parses flags, validates them before binding anything, then runs.

use std::process::ExitCode;

use clap::Parser;
use futures::FutureExt;
use lb::config::{Cli, Command, ConfigError, ServeArgs, Source};
use lb::discovery::k8s::KubernetesDiscovery;
use lb::discovery::{Discovery, StaticDiscovery};
use lb::server::{self, Bound, Settings};

/// Exit code for bad configuration (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Crd => {
            print!("{}", lb::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            lb::telemetry::init(args.log_format);
            let settings = match settings(
                args.listen,
                args.admin_listen,
                &args.proxy,
                std::time::Duration::ZERO,
            ) {
                Ok(s) => s,
                Err(e) => return config_error(&e),
            };
            finish(runtime().and_then(|rt| rt.block_on(lb::demo::run(settings))))
        }
        Command::Probe(args) => {
            let r = runtime()
                .and_then(|rt| Ok(rt.block_on(lb::client::probe(&args.url, args.timeout))?));
            finish(r)
        }
        Command::Check(args) => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return finish(Err(e)),
            };
            let result = rt.block_on(lb::client::check(
                &args.url,
                args.requests,
                args.expect_backends,
                args.timeout,
            ));
            let (counts, error) = match result {
                Ok(c) => (c, None),
                Err((e, c)) => (c, Some(e)),
            };
            for (name, n) in &counts {
                println!("{name}: {n}");
            }
            match error {
                None => {
                    println!(
                        "ok: {} requests split exactly over {} backends",
                        args.requests,
                        counts.len()
                    );
                    ExitCode::SUCCESS
                }
                Some(e) => finish(Err(e.into())),
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn finish(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Validated settings from the shared flags.
fn settings(
    listen: std::net::SocketAddr,
    admin_listen: std::net::SocketAddr,
    proxy: &lb::config::ProxyArgs,
    drain_delay: std::time::Duration,
) -> Result<Settings, ConfigError> {
    let (proxy, policy) = proxy.build()?;
    Ok(Settings {
        listen,
        admin_listen,
        proxy,
        policy,
        drain_delay,
    })
}

fn serve(args: ServeArgs) -> ExitCode {
    lb::telemetry::init(args.log_format);
    let settings = match settings(
        args.listen,
        args.admin_listen,
        &args.proxy,
        args.drain_delay,
    ) {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    let source = match args.source() {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    let bound = match Bound::bind(&settings) {
        Ok(b) => b,
        Err(e) => return finish(Err(e.into())),
    };
    finish(runtime().and_then(|rt| {
        rt.block_on(async move {
            let discovery: Box<dyn Discovery> = match source {
                Source::Static(s) => Box::new(StaticDiscovery::new(s.targets, s.dns_refresh)),
                Source::Kubernetes {
                    namespace,
                    default_upstream,
                } => {
                    let client = lb::discovery::k8s::client().await.map_err(|e| {
                        anyhow::anyhow!(
                            "cannot configure the Kubernetes client (in-cluster or KUBECONFIG): {e}"
                        )
                    })?;
                    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
                    Box::new(KubernetesDiscovery::new(client, ns, default_upstream))
                }
            };
            server::run(
                settings,
                bound,
                discovery,
                lb::shutdown::signal().boxed(),
                |_| {},
            )
            .await?;
            Ok(())
        })
    }))
}
