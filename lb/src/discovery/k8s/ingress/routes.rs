//! Ingress objects (ours, with their annotations read) translated into
//! route-model [`Route`]s.
//!
//! 1. **Entries.** Each path of each rule is one entry: its host, its match
//!    and its backend. `Exact` is an exact path; `Prefix` and
//!    `ImplementationSpecific` are element-wise prefixes (ingress-nginx
//!    treats `ImplementationSpecific` as `Prefix` too). With `use-regex` or
//!    `rewrite-target` every path of the Ingress is a case-insensitive
//!    regular expression anchored at the start, as ingress-nginx writes
//!    them (`~* ^path`). `app-root` adds an exact `/` per host (a 302 to the
//!    root); `defaultBackend` adds a catch-all per host of the Ingress (any
//!    host when it has no rules) that ranks below every path, its own
//!    included.
//! 2. **Conflicts.** Two entries with the same host and the same path (and
//!    path type) cannot both serve: as in ingress-nginx, the oldest Ingress
//!    (`creationTimestamp`, then namespace/name) wins and the other entry is
//!    reported and not routed. Different paths that overlap are not
//!    conflicts: the route model's precedence orders them (`Exact` first,
//!    then the longest path).
//! 3. **Canaries.** A canary Ingress's path joins the main entry with the
//!    same host, path and path type: `canary-weight` of
//!    `canary-weight-total` requests go to the canary's backend, exactly
//!    (the rule's weighted backends); `canary-by-header` and
//!    `canary-by-cookie` become more specific rules (the same path plus a
//!    header condition) in the canary's own route. One canary per entry
//!    (the oldest); a canary path without a main entry is reported.
//! 4. **Routes.** One route per Ingress and host. A host listed in any of
//!    our Ingresses' `tls` sections is a TLS host: unless `ssl-redirect` is
//!    `"false"`, its rules serve the TLS listener only and the plain
//!    listener answers the same matches with a 308 to HTTPS;
//!    `force-ssl-redirect` does so without TLS too.
//! 5. **Hosts are closed.** A host named by our Ingresses answers `404` to
//!    a path none of them serves (unless one gives it a `defaultBackend`),
//!    as ingress-nginx's server for that host does: a request for it never
//!    falls through to a wildcard host or to the rules without a host.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::ResourceExt;

use super::Report;
use super::annotations::{Access, Annotations, BackendProtocol, HeaderRule, PREFIX};
use super::backends::{Backends, Overrides};
use crate::discovery::route::{
    Action, BackendRef, Filters, FixedResponse, HeaderMatch, HostMatch, ListenerId, Listeners,
    Match, Order, Origin, PathMatch, PathRewrite, Pattern, Redirect, RedirectStatus, Rewrite,
    Route, RouteKind, Rule, RulePolicy, Scope, TemplatePart, ValueMatch, WeightedBackend,
    template_parts,
};

/// The name of the rule that answers `404` for a host's unknown paths.
pub const NO_PATH: &str = "no-path";

/// One of our Ingresses, ready to translate.
#[derive(Debug)]
pub struct Ours<'a> {
    /// `namespace/name`.
    pub key: &'a str,
    /// The object.
    pub ingress: &'a Ingress,
    /// Its annotations, read.
    pub annotations: Annotations,
    /// Its creation time (Unix seconds).
    pub created: Option<i64>,
}

impl Ours<'_> {
    fn namespace(&self) -> String {
        self.ingress.namespace().unwrap_or_default()
    }

    fn origin(&self) -> Origin {
        Origin {
            kind: RouteKind::Ingress,
            namespace: self.namespace().into(),
            name: self.ingress.name_any().into(),
        }
    }
}

/// What an entry claims: two entries with the same claim conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ClaimPath {
    Exact(String),
    Prefix(String),
    Regex(String),
    Default,
}

type Claim = (Option<HostMatch>, ClaimPath);

/// A path of a rule.
#[derive(Debug)]
struct PathEntry<'a> {
    matched: Match,
    backend: &'a IngressBackend,
    rewrite: Option<PathRewrite>,
    /// The path as written (the default cookie path).
    path: String,
    /// Host, path and path type as written (a canary's key).
    raw: RawPath,
}

/// Host, path and path type as written.
type RawPath = (Option<HostMatch>, String, String);

#[derive(Debug)]
enum What<'a> {
    Path(Box<PathEntry<'a>>),
    AppRoot(String),
    Default(&'a IngressBackend),
}

#[derive(Debug)]
struct Entry<'a> {
    owner: usize,
    host: Option<HostMatch>,
    claim: Claim,
    what: What<'a>,
    /// The canary Ingress and its backend sharing this entry.
    canary: Option<(usize, &'a IngressBackend)>,
}

fn describe(claim: &Claim) -> String {
    let host = claim
        .0
        .as_ref()
        .map_or_else(|| "any host".to_owned(), ToString::to_string);
    match &claim.1 {
        ClaimPath::Exact(p) => format!("host {host}, Exact path {p}"),
        ClaimPath::Prefix(p) => format!(
            "host {host}, Prefix path {}",
            if p.is_empty() { "/" } else { p }
        ),
        ClaimPath::Regex(p) => format!("host {host}, regular-expression path {p}"),
        ClaimPath::Default => format!("host {host}, defaultBackend"),
    }
}

/// Everything translated: the routes, what to report, how many entries
/// lost a conflict.
#[derive(Debug, Default)]
pub struct Translated {
    /// The routes.
    pub routes: Vec<Route>,
    /// Problems for Events, logs and metrics.
    pub reports: Vec<Report>,
    /// Entries not routed because an older Ingress has the same one.
    pub conflicts: usize,
}

/// The settings that do not come from the objects.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The HTTPS port clients reach (for redirects to HTTPS).
    pub https_port: u16,
    /// The request body limit of an Ingress without `proxy-body-size`
    /// (`None`: none).
    pub max_body_bytes: Option<u64>,
}

/// Translates `ours` (sorted oldest first, then by `namespace/name`).
pub fn translate(ours: &[Ours<'_>], backends: &mut Backends<'_>, settings: Settings) -> Translated {
    let mut out = Translated::default();
    let report = |out: &mut Translated, o: &Ours<'_>, reason: &'static str, message: String| {
        out.reports.push(Report {
            ingress: o.key.to_owned(),
            warning: true,
            reason,
            annotation: None,
            message,
        });
    };

    // 1. Entries of the main (non-canary) Ingresses, oldest first.
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for (i, o) in ours.iter().enumerate() {
        if o.annotations.canary.is_some() {
            continue;
        }
        let a = &o.annotations;
        let spec = o.ingress.spec.as_ref();
        let mut hosts: Vec<Option<HostMatch>> = Vec::new();
        let mut paths: Vec<Entry<'_>> = Vec::new();
        for rule in spec.and_then(|s| s.rules.as_deref()).unwrap_or_default() {
            let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                None => None,
                Some(h) => match HostMatch::parse(h) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        report(
                            &mut out,
                            o,
                            "InvalidHost",
                            format!("{e}; the rule is not routed"),
                        );
                        continue;
                    }
                },
            };
            if !hosts.contains(&host) {
                hosts.push(host.clone());
            }
            for p in rule
                .http
                .as_ref()
                .map(|h| h.paths.as_slice())
                .unwrap_or_default()
            {
                let path = p.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
                let raw = (host.clone(), path.to_owned(), p.path_type.clone());
                let (matched, claim_path) = if a.regex_paths() {
                    // Ranked by the path as written, as ingress-nginx
                    // orders its locations.
                    match Pattern::with_rank(&format!("(?i){path}.*"), path.len()) {
                        Ok(pattern) => (
                            Match {
                                path: PathMatch::Regex(pattern),
                                ..Match::default()
                            },
                            ClaimPath::Regex(path.to_owned()),
                        ),
                        Err(e) => {
                            let (name, why) = if a.use_regex {
                                ("use-regex", "use-regex")
                            } else {
                                (
                                    "rewrite-target",
                                    "rewrite-target (which makes paths regular expressions)",
                                )
                            };
                            out.reports.push(Report {
                                ingress: o.key.to_owned(),
                                warning: true,
                                reason: "InvalidPath",
                                annotation: Some(format!("{PREFIX}{name}")),
                                message: format!(
                                    "path {path:?} is not a regular expression roundhouse accepts \
                                     (with {why}; the regex crate's syntax: no look-around or \
                                     back-references): {e}; not routed"
                                ),
                            });
                            continue;
                        }
                    }
                } else if !path.starts_with('/') {
                    report(
                        &mut out,
                        o,
                        "InvalidPath",
                        format!("path {path:?} does not start with /; not routed"),
                    );
                    continue;
                } else {
                    match p.path_type.as_str() {
                        "Exact" => (Match::exact(path), ClaimPath::Exact(path.to_owned())),
                        "Prefix" | "ImplementationSpecific" => (
                            Match::prefix(path),
                            ClaimPath::Prefix(PathMatch::normalized_prefix(path).to_owned()),
                        ),
                        other => {
                            report(
                                &mut out,
                                o,
                                "InvalidPath",
                                format!(
                                    "path {path:?} has pathType {other:?} (Exact, Prefix or ImplementationSpecific); not routed"
                                ),
                            );
                            continue;
                        }
                    }
                };
                let rewrite = a
                    .rewrite_target
                    .as_deref()
                    .filter(|t| *t != path)
                    .and_then(|t| match unknown_name(t, &matched.path) {
                        None => Some(PathRewrite::Captures(t.into())),
                        Some(name) => {
                            out.reports.push(Report {
                                ingress: o.key.to_owned(),
                                warning: true,
                                reason: "InvalidAnnotation",
                                annotation: Some(format!("{PREFIX}rewrite-target")),
                                message: format!(
                                    "{PREFIX}rewrite-target {t:?} refers to ${name}, which is not \
                                     a named group of path {path:?} (nginx variables are not \
                                     supported; $1…$9 and named groups are); path {path:?} is \
                                     forwarded without a rewrite"
                                ),
                            });
                            None
                        }
                    });
                paths.push(Entry {
                    owner: i,
                    host: host.clone(),
                    claim: (host.clone(), claim_path),
                    what: What::Path(Box::new(PathEntry {
                        matched,
                        backend: &p.backend,
                        rewrite,
                        path: path.to_owned(),
                        raw,
                    })),
                    canary: None,
                });
            }
        }
        // app-root first: in ingress-nginx it is answered before any
        // location of the host.
        if let Some(root) = &a.app_root {
            for host in &hosts {
                entries.push(Entry {
                    owner: i,
                    host: host.clone(),
                    claim: (host.clone(), ClaimPath::Exact("/".into())),
                    what: What::AppRoot(root.clone()),
                    canary: None,
                });
            }
        }
        entries.extend(paths);
        if let Some(default) = spec.and_then(|s| s.default_backend.as_ref()) {
            if hosts.is_empty() {
                hosts.push(None);
            }
            for host in hosts {
                entries.push(Entry {
                    owner: i,
                    host: host.clone(),
                    claim: (host, ClaimPath::Default),
                    what: What::Default(default),
                    canary: None,
                });
            }
        }
    }

    // 2. Conflicts: the first (oldest) claim wins.
    let mut winners: HashMap<Claim, usize> = HashMap::new();
    let mut kept: Vec<Entry<'_>> = Vec::new();
    for e in entries {
        match winners.get(&e.claim) {
            Some(&w) => {
                let winner = &ours[kept[w].owner];
                let loser = &ours[e.owner];
                let message = if winner.key == loser.key {
                    format!(
                        "{} is listed twice in this Ingress; the first is used",
                        describe(&e.claim)
                    )
                } else {
                    format!(
                        "{} is also served by Ingress {}, which is older (or as old and first by \
                         namespace/name) and wins; not routed here while the conflict lasts",
                        describe(&e.claim),
                        winner.key
                    )
                };
                out.conflicts += 1;
                report(&mut out, loser, "Conflict", message);
            }
            None => {
                winners.insert(e.claim.clone(), kept.len());
                kept.push(e);
            }
        }
    }

    // 3. Canaries join the main entry with the same host, path, path type.
    let by_raw: HashMap<RawPath, usize> = kept
        .iter()
        .enumerate()
        .filter_map(|(k, e)| match &e.what {
            What::Path(p) => Some((p.raw.clone(), k)),
            _ => None,
        })
        .collect();
    for (c, o) in ours.iter().enumerate() {
        if o.annotations.canary.is_none() {
            continue;
        }
        let spec = o.ingress.spec.as_ref();
        if spec.is_some_and(|s| s.default_backend.is_some()) {
            report(
                &mut out,
                o,
                "CanaryDefaultBackend",
                "the defaultBackend of a canary Ingress is not used (only its rules' paths join \
                 the main Ingress's)"
                    .into(),
            );
        }
        for rule in spec.and_then(|s| s.rules.as_deref()).unwrap_or_default() {
            let Ok(host) = rule
                .host
                .as_deref()
                .filter(|h| !h.is_empty())
                .map(HostMatch::parse)
                .transpose()
            else {
                report(
                    &mut out,
                    o,
                    "InvalidHost",
                    format!(
                        "host {:?} is not a valid host name; the rule is not routed",
                        rule.host
                    ),
                );
                continue;
            };
            for p in rule
                .http
                .as_ref()
                .map(|h| h.paths.as_slice())
                .unwrap_or_default()
            {
                let path = p.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
                let key = (host.clone(), path.to_owned(), p.path_type.clone());
                let where_ = format!(
                    "host {}, {} path {path}",
                    host.as_ref()
                        .map_or_else(|| "any host".to_owned(), ToString::to_string),
                    p.path_type
                );
                match by_raw.get(&key) {
                    None => report(
                        &mut out,
                        o,
                        "CanaryWithoutMain",
                        format!(
                            "canary {where_}: no Ingress of this class (that is not a canary) \
                             serves the same host, path and pathType; not routed"
                        ),
                    ),
                    Some(&k) => match kept[k].canary {
                        Some((older, _)) => {
                            out.conflicts += 1;
                            let message = format!(
                                "canary {where_}: Ingress {} is already the canary of this path \
                                 (one canary per path, the oldest); not routed here",
                                ours[older].key
                            );
                            report(&mut out, o, "Conflict", message);
                        }
                        None => kept[k].canary = Some((c, &p.backend)),
                    },
                }
            }
        }
    }

    // 4. TLS hosts: listed in a `tls` section of one of our Ingresses.
    let mut tls_hosts: BTreeSet<HostMatch> = BTreeSet::new();
    for o in ours.iter().filter(|o| o.annotations.canary.is_none()) {
        let spec = o.ingress.spec.as_ref();
        for t in spec.and_then(|s| s.tls.as_deref()).unwrap_or_default() {
            match t.hosts.as_deref() {
                Some(hosts) if !hosts.is_empty() => {
                    tls_hosts.extend(hosts.iter().filter_map(|h| HostMatch::parse(h).ok()));
                }
                // No hosts: the Ingress's own hosts.
                _ => tls_hosts.extend(
                    spec.and_then(|s| s.rules.as_deref())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|r| r.host.as_deref().and_then(|h| HostMatch::parse(h).ok())),
                ),
            }
        }
    }

    // 5. Routes: per Ingress and host (the catch-alls apart).
    // (owner, host, catch-all) and its entries.
    type Group<'e, 'a> = ((usize, Option<HostMatch>, bool), Vec<&'e Entry<'a>>);
    let mut groups: Vec<Group<'_, '_>> = Vec::new();
    for e in &kept {
        let key = (e.owner, e.host.clone(), matches!(e.what, What::Default(_)));
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(e),
            None => groups.push((key, vec![e])),
        }
    }
    let mut builder = Builder {
        ours,
        backends,
        settings,
        reported: BTreeSet::new(),
        reports: Vec::new(),
    };
    for ((owner, host, default), list) in groups {
        let o = &ours[owner];
        let a = &o.annotations;
        let tls = host.as_ref().is_some_and(|h| tls_hosts.contains(h));
        let redirect_plain = a.force_ssl_redirect || (tls && a.ssl_redirect);
        let mut rules = Vec::new();
        let mut canary_rules: Vec<(usize, Rule)> = Vec::new();
        for e in list {
            let rule = builder.rule(e);
            if let Some((c, backend)) = e.canary
                && matches!(rule.action, Action::Forward(_))
            {
                for r in builder.canary_rules(e, &rule, c, backend) {
                    canary_rules.push((c, r));
                }
            }
            rules.push(rule);
        }
        let hostnames: Vec<HostMatch> = host.iter().cloned().collect();
        let forward_on = if redirect_plain {
            Listeners::only(ListenerId::TLS)
        } else {
            Listeners::ALL
        };
        let order = Order {
            // Catch-alls rank below every path of the host.
            created: if default { None } else { o.created },
        };
        let scope = |listeners| {
            vec![Scope {
                listeners,
                hostnames: hostnames.clone(),
            }]
        };
        if redirect_plain {
            let redirects = rules
                .iter()
                .map(|r| https_redirect(r, settings.https_port))
                .collect();
            out.routes.push(Route {
                origin: o.origin(),
                order,
                scopes: scope(Listeners::only(ListenerId::PLAIN)),
                rules: redirects,
            });
        }
        out.routes.push(Route {
            origin: o.origin(),
            order,
            scopes: scope(forward_on),
            rules,
        });
        // The canaries' header and cookie rules, each in its canary's route.
        let mut by_canary: Vec<(usize, Vec<Rule>)> = Vec::new();
        for (c, r) in canary_rules {
            match by_canary.iter_mut().find(|(k, _)| *k == c) {
                Some((_, list)) => list.push(r),
                None => by_canary.push((c, vec![r])),
            }
        }
        for (c, rules) in by_canary {
            out.routes.push(Route {
                origin: ours[c].origin(),
                order: Order {
                    created: ours[c].created,
                },
                scopes: scope(forward_on),
                rules,
            });
        }
    }
    // 6. A host of our Ingresses answers 404 to the paths none of them
    //    has, unless one of them gives it a defaultBackend: ingress-nginx
    //    answers from the host's own server, never from a wider wildcard
    //    host or the rules without a host.
    let mut hosts: Vec<(&HostMatch, usize)> = Vec::new();
    let mut defaulted: BTreeSet<&HostMatch> = BTreeSet::new();
    for e in &kept {
        let Some(h) = &e.host else { continue };
        if matches!(e.what, What::Default(_)) {
            defaulted.insert(h);
        }
        if !hosts.iter().any(|(k, _)| *k == h) {
            hosts.push((h, e.owner));
        }
    }
    for (host, owner) in hosts {
        if defaulted.contains(host) {
            continue;
        }
        out.routes.push(Route {
            origin: ours[owner].origin(),
            order: Order { created: None },
            scopes: vec![Scope {
                listeners: Listeners::ALL,
                hostnames: vec![host.clone()],
            }],
            rules: vec![Rule {
                name: Some(NO_PATH.into()),
                matches: vec![Match::prefix("/")],
                filters: Filters::default(),
                action: Action::Respond(FixedResponse {
                    status: http::StatusCode::NOT_FOUND,
                    body: "no Ingress path of this host matches this request\n".into(),
                }),
                policy: RulePolicy::default(),
            }],
        });
    }
    out.reports.extend(builder.reports);
    for r in &out.routes {
        if let Err(e) = r.validate() {
            // The adapter builds only valid rules; say so loudly if not.
            out.reports.push(Report {
                ingress: format!("{}/{}", r.origin.namespace, r.origin.name),
                warning: true,
                reason: "InvalidRoute",
                annotation: None,
                message: format!(
                    "roundhouse built a rule it cannot serve ({e}); please report this"
                ),
            });
        }
    }
    out
}

/// The first `$name` of a capture template that is not a named group of
/// the path's expression (an nginx variable, which roundhouse does not
/// have).
fn unknown_name<'t>(template: &'t str, path: &PathMatch) -> Option<&'t str> {
    let PathMatch::Regex(pattern) = path else {
        return None;
    };
    template_parts(template).find_map(|part| match part {
        TemplatePart::Named(name) if !pattern.regex().capture_names().any(|n| n == Some(name)) => {
            Some(name)
        }
        _ => None,
    })
}

/// The plain-listener twin of a rule on a host served over TLS: the same
/// matches answered with a 308 to HTTPS (redirect rules stay as they are,
/// as ingress-nginx answers its `return`s first; CORS preflights are still
/// answered).
fn https_redirect(rule: &Rule, https_port: u16) -> Rule {
    if matches!(rule.action, Action::Redirect(_)) {
        return rule.clone();
    }
    Rule {
        name: rule.name.clone(),
        matches: rule.matches.clone(),
        filters: Filters {
            cors: rule.filters.cors.clone(),
            ..Filters::default()
        },
        action: Action::Redirect(Redirect {
            scheme: Some("https".into()),
            hostname: None,
            path: None,
            port: (https_port != 443).then_some(https_port),
            status: RedirectStatus::PERMANENT_REDIRECT,
        }),
        policy: RulePolicy::default(),
    }
}

/// A `cookie` header condition: the cookie `name` with `value`.
fn cookie_is(name: &str, value: &str) -> Option<HeaderMatch> {
    let pattern = format!(
        r"(?:.*;[ \t]*)?{}={}(?:[ \t]*;.*)?",
        regex::escape(name),
        regex::escape(value)
    );
    Some(HeaderMatch {
        name: http::header::COOKIE,
        value: ValueMatch::Regex(Pattern::new(&pattern).ok()?),
    })
}

struct Builder<'a, 'b> {
    ours: &'a [Ours<'a>],
    backends: &'a mut Backends<'b>,
    settings: Settings,
    /// (Ingress, message) already reported in this computation.
    reported: BTreeSet<(String, String)>,
    reports: Vec<Report>,
}

impl Builder<'_, '_> {
    fn report(&mut self, key: &str, reason: &'static str, message: String) {
        if self.reported.insert((key.to_owned(), message.clone())) {
            self.reports.push(Report {
                ingress: key.to_owned(),
                warning: true,
                reason,
                annotation: None,
                message,
            });
        }
    }

    /// Where a share of `owner`'s traffic to `backend` goes.
    fn target(&mut self, owner: usize, backend: &IngressBackend) -> BackendRef {
        let o = &self.ours[owner];
        let a = &o.annotations;
        if let BackendProtocol::Unsupported(p) = &a.protocol {
            return BackendRef::Invalid(format!("backend-protocol {p} is not supported").into());
        }
        let Some(svc) = &backend.service else {
            let why = "a resource backend (not a Service) is not supported".to_owned();
            self.report(
                o.key,
                "UnsupportedBackend",
                format!("{why}; its requests answer 500"),
            );
            return BackendRef::Invalid(why.into());
        };
        let overrides = Overrides {
            protocol: match a.protocol {
                BackendProtocol::Known(p) => Some(p),
                _ => None,
            },
            connect_timeout: a.connect_timeout,
        };
        match self.backends.get(&o.namespace(), svc, &overrides, o.key) {
            Ok(b) => BackendRef::Resolved(b),
            Err(why) => {
                self.report(
                    o.key,
                    "BackendNotFound",
                    format!("{why}; its requests answer 500"),
                );
                BackendRef::Invalid(why.into())
            }
        }
    }

    /// The filters of `owner`'s rules (`cookie_path`: the default path of
    /// an affinity cookie).
    fn filters(&self, owner: usize, cookie_path: Option<&str>) -> Filters {
        let a = &self.ours[owner].annotations;
        Filters {
            rewrite: a.upstream_vhost.clone().map(|h| Rewrite {
                hostname: Some(h),
                path: None,
            }),
            source: match &a.access {
                Some(Access::Ranges(r)) => Some(r.clone()),
                _ => None,
            },
            cors: a.cors.clone(),
            max_body_bytes: match a.max_body_bytes {
                None => self.settings.max_body_bytes,
                Some(0) => None,
                Some(n) => Some(n),
            },
            affinity: a.affinity.clone().map(|mut c| {
                if c.path.is_none() {
                    c.path = cookie_path.map(Into::into);
                }
                c
            }),
            ..Filters::default()
        }
    }

    fn rule(&mut self, e: &Entry<'_>) -> Rule {
        let owner = e.owner;
        let a = &self.ours[owner].annotations;
        let policy = RulePolicy {
            backend_request_timeout: a.read_timeout,
            ..RulePolicy::default()
        };
        let deny_all = match &a.access {
            Some(Access::DenyAll(why)) => Some(why.clone()),
            _ => None,
        };
        let redirect = a.redirect.clone();
        let (matches, mut filters, action) = match &e.what {
            What::AppRoot(root) => (
                vec![Match::exact("/")],
                Filters::default(),
                Action::Redirect(Redirect {
                    path: Some(PathRewrite::ReplaceFull(root.as_str().into())),
                    status: RedirectStatus::FOUND,
                    ..Redirect::default()
                }),
            ),
            What::Default(backend) => {
                let target = self.target(owner, backend);
                (
                    vec![Match::prefix("/")],
                    self.filters(owner, None),
                    Action::Forward(vec![WeightedBackend { weight: 1, target }]),
                )
            }
            What::Path(p) => {
                let PathEntry {
                    matched,
                    backend,
                    rewrite,
                    path,
                    ..
                } = &**p;
                let cookie_path =
                    (!matches!(matched.path, PathMatch::Regex(_))).then_some(path.as_str());
                let mut filters = self.filters(owner, cookie_path);
                if let Some(r) = rewrite {
                    filters.rewrite.get_or_insert_with(Rewrite::default).path = Some(r.clone());
                }
                let action = match redirect {
                    Some(r) => Action::Redirect(r),
                    None => {
                        let main = self.target(owner, backend);
                        match e.canary {
                            None => Action::Forward(vec![WeightedBackend {
                                weight: 1,
                                target: main,
                            }]),
                            Some((c, canary_backend)) => {
                                let (weight, total) = self.ours[c]
                                    .annotations
                                    .canary
                                    .as_ref()
                                    .map_or((0, 1), |k| (k.weight, k.total));
                                let mut shares = vec![WeightedBackend {
                                    weight: total - weight,
                                    target: main,
                                }];
                                if weight > 0 {
                                    shares.push(WeightedBackend {
                                        weight,
                                        target: self.target(c, canary_backend),
                                    });
                                }
                                Action::Forward(shares)
                            }
                        }
                    }
                };
                (vec![matched.clone()], filters, action)
            }
        };
        // Redirects are answered before any access check (nginx's rewrite
        // phase comes before its access phase), so lists do not apply to
        // them.
        if matches!(action, Action::Redirect(_)) {
            filters.source = None;
        }
        let action = match deny_all {
            // An allow- or deny-list that cannot be read refuses everyone.
            Some(why) if matches!(action, Action::Forward(_)) => {
                filters = Filters::default();
                Action::Respond(FixedResponse {
                    status: http::StatusCode::FORBIDDEN,
                    body: format!("403 Forbidden ({why})\n").into(),
                })
            }
            _ => action,
        };
        Rule {
            name: None,
            matches,
            filters,
            action,
            policy,
        }
    }

    /// The canary `c`'s header and cookie rules for the main entry `e`
    /// (whose rule is `main`): the same match plus the condition, to the
    /// canary's backend (`always`, a value, a pattern) or the main's
    /// (`never`), with the main's filters and policy.
    fn canary_rules(
        &mut self,
        e: &Entry<'_>,
        main: &Rule,
        c: usize,
        backend: &IngressBackend,
    ) -> Vec<Rule> {
        let Some(canary) = self.ours[c].annotations.canary.clone() else {
            return Vec::new();
        };
        let What::Path(p) = &e.what else {
            return Vec::new();
        };
        let (matched, main_backend) = (&p.matched, p.backend);
        let mut conditions: Vec<(HeaderMatch, bool)> = Vec::new();
        if let Some((name, rule)) = &canary.header {
            let exact = |v: &str| HeaderMatch {
                name: name.clone(),
                value: ValueMatch::Exact(v.into()),
            };
            match rule {
                HeaderRule::AlwaysNever => {
                    conditions.push((exact("always"), true));
                    conditions.push((exact("never"), false));
                }
                HeaderRule::Value(v) => conditions.push((exact(v), true)),
                HeaderRule::Pattern(p) => conditions.push((
                    HeaderMatch {
                        name: name.clone(),
                        value: ValueMatch::Regex(p.clone()),
                    },
                    true,
                )),
            }
        }
        if let Some(cookie) = &canary.cookie {
            conditions.extend(cookie_is(cookie, "always").map(|h| (h, true)));
            conditions.extend(cookie_is(cookie, "never").map(|h| (h, false)));
        }
        let mut rules = Vec::new();
        for (header, to_canary) in conditions {
            let target = if to_canary {
                self.target(c, backend)
            } else {
                self.target(e.owner, main_backend)
            };
            let mut m = matched.clone();
            m.headers.push(header);
            rules.push(Rule {
                name: None,
                matches: vec![m],
                filters: main.filters.clone(),
                action: Action::Forward(vec![WeightedBackend { weight: 1, target }]),
                policy: main.policy.clone(),
            });
        }
        rules
    }
}

/// The entries' backends, for tests.
#[cfg(test)]
pub(crate) fn shares(rule: &Rule) -> Vec<(String, u32)> {
    match &rule.action {
        Action::Forward(s) => s
            .iter()
            .map(|w| {
                let name = match &w.target {
                    BackendRef::Resolved(b) => b.name.to_string(),
                    BackendRef::Invalid(why) => format!("invalid: {why}"),
                };
                (name, w.weight)
            })
            .collect(),
        _ => Vec::new(),
    }
}
