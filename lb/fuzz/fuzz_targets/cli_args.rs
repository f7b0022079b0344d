//! `lb serve` flag parsing and validation must answer bad flags with an
//! error, never a panic. The input is split into arguments at NUL and
//! newline bytes (so seeds stay readable).
#![no_main]

use clap::Parser;
use lb::config::{Cli, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut args: Vec<String> = vec!["lb".into(), "serve".into()];
    args.extend(
        text.split(['\0', '\n'])
            .filter(|a| !a.is_empty())
            .take(64)
            .map(str::to_owned),
    );
    // Flags only: environment twins (LB_*) are not set while fuzzing.
    let Ok(cli) = Cli::try_parse_from(&args) else {
        return;
    };
    if let Command::Serve(serve) = cli.command {
        // `--config` would read a file: point it nowhere readable instead of
        // letting the fuzzer read arbitrary paths.
        let mut serve = *serve;
        if serve.config.is_some() {
            serve.config = Some("/nonexistent/lb-fuzz.yaml".into());
        }
        let _ = serve.source();
        if let Ok((proxy, policy)) = serve.proxy.build() {
            assert!(proxy.workers >= 1);
            assert!(proxy.max_connections >= 1);
            assert!(policy.retries <= 10);
        }
    }
});
