//! The admin page (`GET /`): one self-contained HTML document compiled into
//! the binary, rendered on the server with the same numbers as
//! `/api/stats` (so it reads without JavaScript), then kept live by its
//! inline script, which polls `/api/stats` every second and rebuilds the
//! tables with DOM calls (text nodes only, never `innerHTML`).
//!
//! Every name shown (upstream, pod, host, path) is HTML-escaped here and set
//! as text by the script. The inline `<style>` and `<script>` are allowed by
//! their SHA-256 hashes in the Content-Security-Policy, so no other script
//! or style can run, and the page loads nothing from anywhere.

use std::fmt::Write as _;
use std::sync::LazyLock;

use super::stats::{EndpointStats, StatsDoc, UpstreamStats};

/// The template, inline CSS and JS included.
pub const TEMPLATE: &str = include_str!("page.html");

/// The windows the page links to, in seconds.
const WINDOWS: [u64; 3] = [10, 30, 60];

/// The `Content-Security-Policy` of the page.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256_source(inline(TEMPLATE, "script")),
        sha256_source(inline(TEMPLATE, "style")),
    )
});

/// The text between `<tag>` and `</tag>` (the first such element).
fn inline<'a>(html: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = html.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = html[start..].find(&close).map_or(start, |i| start + i);
    &html[start..end]
}

/// A CSP hash source, `sha256-<base64>`, of `text`.
fn sha256_source(text: &str) -> String {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let digest = suite
        .tls13()
        .map(|s| s.common.hash_provider.hash(text.as_bytes()))
        .expect("a TLS 1.3 suite");
    format!("sha256-{}", base64(digest.as_ref()))
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "\u{2014}".to_owned(), |x| format!("{x:.1} %"))
}

fn rate(x: Option<f64>) -> String {
    x.map_or_else(|| "\u{2014}".to_owned(), |x| format!("{x:.1}"))
}

fn ms(x: Option<f64>) -> String {
    match x {
        None => "\u{2014}".to_owned(),
        Some(x) if x < 10.0 => format!("{x:.2} ms"),
        Some(x) if x < 100.0 => format!("{x:.1} ms"),
        Some(x) => format!("{x:.0} ms"),
    }
}

fn secs(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.1} s")
    } else {
        format!("{x:.0} s")
    }
}

/// The whole page for `doc`.
pub fn render(doc: &StatsDoc) -> String {
    let win = doc.window_seconds;
    let nav = {
        let mut nav = String::from("Share and rates over the last ");
        for (i, w) in WINDOWS.iter().enumerate() {
            if i > 0 {
                nav.push_str(" · ");
            }
            let current = if *w == win {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(nav, "<a href=\"?window={w}\"{current}>{w} s</a>");
        }
        nav
    };
    let status = format!(
        "Snapshot from the server · table version {} · up {} · live updates need JavaScript (or reload).",
        doc.version,
        secs(doc.uptime_seconds)
    );
    let l = &doc.latency;
    let latency = escape(&format!(
        "Latency ({}, request head to response head): last {win} s p50 {}, p99 {} ({} requests) · \
         since start p50 {}, p99 {} ({} requests)",
        l.scope,
        ms(l.window.p50_ms),
        ms(l.window.p99_ms),
        l.window.count,
        ms(l.since_start.p50_ms),
        ms(l.since_start.p99_ms),
        l.since_start.count
    ));
    let mut upstreams = String::new();
    if doc.upstreams.is_empty() {
        upstreams.push_str(
            "<p class=\"empty\">No upstreams yet: discovery has not produced a routing table.</p>",
        );
    }
    for (i, u) in doc.upstreams.iter().enumerate() {
        section(&mut upstreams, i, u, win);
    }
    TEMPLATE
        .replacen("{{nav}}", &nav, 1)
        .replacen("{{status}}", &escape(&status), 1)
        .replacen("{{latency}}", &latency, 1)
        .replacen("{{window}}", &win.to_string(), 1)
        .replacen("{{upstreams}}", &upstreams, 1)
}

fn section(out: &mut String, i: usize, u: &UpstreamStats, win: u64) {
    let name = escape(&u.name);
    let ready = u.endpoints.iter().filter(|e| e.state == "ready").count();
    let host = u.host.as_deref().map_or_else(
        || "any host".to_owned(),
        |h| format!("<code>host {}</code>", escape(h)),
    );
    let path = u.path_prefix.as_deref().map_or_else(
        || "any path".to_owned(),
        |p| format!("<code>path prefix {}</code>", escape(p)),
    );
    let _ = write!(
        out,
        "<section class=\"upstream\" data-upstream=\"{name}\" aria-labelledby=\"up-{i}\">\n\
         <h2 id=\"up-{i}\">Upstream <code>{name}</code></h2>\n\
         <p class=\"match\">Match: {host}, {path} · protocol {} · {} endpoints ({ready} ready, {} ejected) · \
         {} requests since start, {} in the last {win} s</p>\n\
         <div class=\"table-wrap\"><table>\n<caption>Endpoints of upstream {name}</caption>\n<thead><tr>",
        escape(&u.protocol),
        u.endpoints.len(),
        u.endpoints.len() - ready,
        u.requests,
        u.window_requests,
    );
    let cols = [
        "Endpoint".to_owned(),
        "State".to_owned(),
        "Address".to_owned(),
        format!("Share, last {win} s"),
        "Since start".to_owned(),
        "req/s".to_owned(),
        "5xx/s".to_owned(),
        "Requests".to_owned(),
        "5xx".to_owned(),
    ];
    for (j, c) in cols.iter().enumerate() {
        let class = if j >= 4 { " class=\"num\"" } else { "" };
        let _ = write!(out, "<th scope=\"col\"{class}>{c}</th>");
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    if u.endpoints.is_empty() {
        let _ = writeln!(
            out,
            "<tr><td colspan=\"{}\" class=\"empty\">No endpoints</td></tr>",
            cols.len()
        );
    }
    for e in &u.endpoints {
        row(out, e, win);
    }
    out.push_str("</tbody>\n</table></div>\n</section>\n");
}

fn row(out: &mut String, e: &EndpointStats, win: u64) {
    let label = escape(e.name.as_deref().unwrap_or(&e.address));
    let address = escape(&e.address);
    let state_class = if e.state == "ejected" {
        "ejected"
    } else {
        "ready"
    };
    let state = match e.ejected_for_seconds {
        Some(left) if e.state == "ejected" => format!("ejected · {} left", secs(left)),
        _ => escape(&e.state),
    };
    let w = e.window.as_ref();
    let share = w.and_then(|w| w.share);
    let _ = writeln!(
        out,
        "<tr class=\"endpoint\" data-address=\"{address}\" data-state=\"{state_class}\">\
         <th scope=\"row\">{label}</th>\
         <td><span class=\"state {state_class}\">{state}</span></td>\
         <td><code>{address}</code></td>\
         <td><div class=\"share\"><meter class=\"share-window\" min=\"0\" max=\"100\" value=\"{}\" \
         aria-label=\"Share of {label} over the last {win} s\">{pct}</meter> \
         <span class=\"pct\">{pct}</span></div></td>\
         <td class=\"num share-total\">{}</td>\
         <td class=\"num rps\">{}</td>\
         <td class=\"num eps\">{}</td>\
         <td class=\"num\">{}</td>\
         <td class=\"num\">{}</td></tr>",
        share.unwrap_or(0.0),
        pct(e.share_since_start),
        rate(w.map(|w| w.requests_per_second)),
        rate(w.map(|w| w.errors_5xx_per_second)),
        e.requests,
        e.errors_5xx,
        pct = pct(share),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input}");
        }
    }

    #[test]
    fn csp_hashes_the_inline_script_and_style() {
        // SHA-256 of "abc" (FIPS 180-2 test vector), base64.
        assert_eq!(
            sha256_source("abc"),
            "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        let script = inline(TEMPLATE, "script");
        let style = inline(TEMPLATE, "style");
        assert!(script.contains("api/stats") && style.contains("prefers-color-scheme"));
        assert!(CSP.contains(&sha256_source(script)) && CSP.contains(&sha256_source(style)));
        assert!(CSP.starts_with("default-src 'none'"));
        // Nothing from outside: no URL with a scheme or protocol-relative.
        for needle in [
            "http://",
            "https://",
            "src=\"//",
            "href=\"//",
            "@import",
            "url(",
        ] {
            assert!(!TEMPLATE.contains(needle), "{needle}");
        }
        // The placeholders are outside the hashed parts.
        assert!(!script.contains("{{") && !style.contains("{{"));
    }
}
