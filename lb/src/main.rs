//! `lb`: parses flags, validates them before binding anything, then runs.
//! The only place where errors become `anyhow` values, exit codes and the
//! one `error: …` line on stderr. `lb probe` and `lb check` are the
//! binary's own ([`client`]); everything else is the `lb` library.

mod client;

/// The allocator: jemalloc, which gives freed pages back to the system at
/// once (its options are in `.cargo/config.toml`), so no `malloc_trim`
/// timer is needed; chosen by measurement (docs/benchmarks.md,
/// "Allocators").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::Parser;
use futures::FutureExt;
use lb::config::{Cli, Command, ConfigError, ProxyArgs, ServeArgs};
use lb::discovery::Source;
use lb::discovery::certs::read_cert_files;
use lb::discovery::reload::Reload;
use lb::proxy::tls::CertStore;
use lb::server::{self, Bound, Settings, TlsSettings};

/// Exit code for bad configuration (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Serve(args) => serve(*args).map_err(Into::into),
        Command::Crd => {
            print!("{}", lb::crd::crd_yaml());
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            lb::telemetry::init(args.log_format);
            settings(
                args.listen,
                args.admin_listen,
                &args.proxy,
                std::time::Duration::ZERO,
            )
            .and_then(|settings| {
                log_allocator();
                block_on(lb::demo::run(settings))
            })
            .map_err(Into::into)
        }
        Command::Probe(args) => probe(&args),
        Command::Check(args) => check(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<lb::Error>()
                .is_some_and(lb::Error::is_config) =>
        {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on<T>(f: impl Future<Output = lb::Result<T>>) -> lb::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Validated settings from the shared flags.
fn settings(
    listen: std::net::SocketAddr,
    admin_listen: std::net::SocketAddr,
    proxy: &ProxyArgs,
    drain_delay: std::time::Duration,
) -> lb::Result<Settings> {
    let (proxy, policy) = proxy.build()?;
    Ok(Settings {
        listen,
        admin_listen,
        proxy,
        policy,
        drain_delay,
        tls: None,
    })
}

/// Logs the allocator and the options jemalloc really runs with, read back
/// from it (`opt.dirty_decay_ms`, `opt.muzzy_decay_ms`,
/// `opt.background_thread`): what `.cargo/config.toml` built in, or what a
/// `_RJEM_MALLOC_CONF` variable overrode. One info line: `lb serve` writes
/// it right after "roundhouse lb started" (lb/tests/allocator.rs checks
/// it), `lb demo` once its flags are valid.
fn log_allocator() {
    use tikv_jemalloc_ctl::{Access, AsName};
    let read = || -> tikv_jemalloc_ctl::Result<(isize, isize, bool)> {
        Ok((
            b"opt.dirty_decay_ms\0".name().read()?,
            b"opt.muzzy_decay_ms\0".name().read()?,
            tikv_jemalloc_ctl::opt::background_thread::read()?,
        ))
    };
    match read() {
        Ok((dirty_decay_ms, muzzy_decay_ms, background_thread)) => tracing::info!(
            allocator = "jemalloc",
            dirty_decay_ms,
            muzzy_decay_ms,
            background_thread,
            "memory allocator"
        ),
        Err(e) => tracing::warn!(
            allocator = "jemalloc",
            error = %e,
            "memory allocator: its options could not be read"
        ),
    }
}

fn serve(args: ServeArgs) -> lb::Result<()> {
    lb::telemetry::init(args.log_format);
    let mut settings = settings(
        args.listen,
        args.admin_listen,
        &args.proxy,
        args.drain_delay,
    )?;
    let source = args.source()?;
    settings.proxy.tls_handshake_timeout = args.tls.tls_handshake_timeout;
    if args.tls.https_redirect {
        if !source.has_tls() {
            return Err(ConfigError::Invalid(
                "--https-redirect needs TLS: --tls-cert/--tls-key or --tls-secret".into(),
            )
            .into());
        }
        settings.proxy.https_redirect = Some(args.tls.https_port);
    }
    if source.has_tls() {
        let certs = CertStore::empty();
        // Certificate files are checked before anything is bound; Secrets
        // once the API client exists (below).
        if let Source::Static(s) = &source {
            let pairs = read_cert_files(&s.tls).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            certs.replace(&pairs).map_err(ConfigError::Tls)?;
        }
        settings.tls = Some(TlsSettings {
            listen: args.tls.tls_listen,
            certs,
        });
    }
    let bound = Bound::bind(&settings)?;
    block_on(async move {
        // Before anything accepts: SIGHUP's default action is to exit.
        let mut hangups = lb::shutdown::hangups()?;
        let reload = match (&source, &args.config) {
            (Source::Static(_), Some(path)) => {
                let poll = args.config_poll.max(std::time::Duration::from_millis(10));
                let args = args.clone();
                Some(Reload {
                    path: path.clone(),
                    load: std::sync::Arc::new(move || {
                        args.static_source().map_err(|e| e.to_string())
                    }),
                    poll,
                    triggers: hangups,
                })
            }
            _ => {
                let why = if matches!(source, Source::Kubernetes { .. } | Source::Ingress(_)) {
                    "SIGHUP does nothing in Kubernetes mode: the Kubernetes objects are the live configuration"
                } else {
                    "SIGHUP: nothing to reload (no --config file; --backend flags need a restart)"
                };
                tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!("{why}");
                    }
                });
                None
            }
        };
        let built = source.build(reload).await?;
        // In Ingress and Gateway API modes the certificates come later,
        // from the Ingresses' Secrets or the Gateways' listeners: the TLS
        // listener starts with none.
        if let Some(tls) = &settings.tls
            && !built.certs.is_empty()
        {
            tls.certs.replace(&built.certs).map_err(ConfigError::Tls)?;
        }
        server::run(
            settings,
            bound,
            built.discovery,
            lb::shutdown::signal().boxed(),
            // Once started, so a configuration error stays the one line on
            // stderr.
            |_| log_allocator(),
        )
        .await?;
        Ok(())
    })
}

fn probe(args: &lb::config::ProbeArgs) -> anyhow::Result<()> {
    block_on(async { Ok(client::probe(&args.url, args.timeout).await) })??;
    Ok(())
}

fn check(args: &lb::config::CheckArgs) -> anyhow::Result<()> {
    let result = block_on(async {
        let (url, n, k, timeout) = (&args.url, args.requests, args.expect_backends, args.timeout);
        Ok(if args.grpc {
            client::check_grpc(url, n, k, timeout).await
        } else {
            client::check(url, n, k, timeout).await
        })
    })?;
    let (counts, error) = match result {
        Ok(c) => (c, None),
        Err((e, c)) => (c, Some(e)),
    };
    for (name, n) in &counts {
        println!("{name}: {n}");
    }
    if let Some(e) = error {
        return Err(e.into());
    }
    let what = if args.grpc {
        "gRPC calls over one HTTP/2 connection"
    } else {
        "requests"
    };
    println!(
        "ok: {} {what} split exactly over {} backends",
        args.requests,
        counts.len()
    );
    Ok(())
}
