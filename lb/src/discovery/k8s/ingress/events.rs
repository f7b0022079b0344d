//! Reports about Ingresses made visible: a Kubernetes Event on the Ingress
//! (`events.k8s.io/v1`, created, never patched), a log line, and for
//! annotations the `roundhouse_ingress_annotations_total` metric naming the
//! annotation.
//!
//! Each distinct report (reason and message) is made once per object
//! generation and annotations (Kubernetes does not bump the generation for
//! an annotation change): a changed spec or changed annotations report what
//! is still wrong again, a re-computation for another reason (an endpoint
//! moved) does not. Every replica of the LB reports what it sees.
//!
//! Bounded: Events wait in a queue of [`QUEUE`] (beyond, they are dropped
//! and counted), [`IN_FLIGHT`] are created at once, each note is cut to
//! the API's 1 kB, and the metric takes at most [`LABELS`] distinct
//! annotation names (then `other`), so hostile objects cannot grow memory
//! or the metric without bound.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use super::Report;
use super::class::CONTROLLER;
use crate::metrics::{AnnotationLabels, DiscoveryMetrics, ResultLabels};

/// Events waiting to be created, at most.
pub const QUEUE: usize = 1024;
/// Events being created at once.
pub const IN_FLIGHT: usize = 4;
/// Distinct annotation names the metric takes.
pub const LABELS: usize = 256;
/// The API's limit on an Event's note, in bytes.
const NOTE_MAX: usize = 1024;

/// The Event's `action`.
pub const ACTION: &str = "Route";

/// Where Events go (the Kubernetes API, or nowhere in tests).
pub trait EventSink: Send + 'static {
    /// Creates `event`.
    fn create(&self, event: Event) -> BoxFuture<'static, Result<(), kube::Error>>;
}

/// Creates Events through the API.
#[derive(Clone)]
pub struct ApiEvents(pub Client);

impl EventSink for ApiEvents {
    fn create(&self, event: Event) -> BoxFuture<'static, Result<(), kube::Error>> {
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.0.clone(), &ns);
        Box::pin(async move {
            api.create(&PostParams::default(), &event).await?;
            Ok(())
        })
    }
}

/// Which version of an Ingress was reported on: its generation and a hash
/// of its annotations.
type Version = (Option<i64>, u64);

/// Per Ingress: the version reported for, and what was reported (reason,
/// message).
type Seen = HashMap<String, (Version, HashSet<(&'static str, String)>)>;

fn version(ingress: &Ingress) -> Version {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ingress.metadata.annotations.hash(&mut h);
    (ingress.metadata.generation, h.finish())
}

/// Makes reports visible once per object generation.
pub struct Reporter<S> {
    sink: S,
    instance: String,
    metrics: DiscoveryMetrics,
    seen: Seen,
    labels: HashSet<String>,
    queue: VecDeque<Event>,
    in_flight: FuturesUnordered<BoxFuture<'static, Result<(), kube::Error>>>,
    failures: u64,
}

/// A unique suffix for Event names.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl<S: EventSink> Reporter<S> {
    /// Reports to `sink` as `instance` (the pod's name), counting in
    /// `metrics`.
    pub fn new(sink: S, instance: impl Into<String>, metrics: DiscoveryMetrics) -> Self {
        Self {
            sink,
            instance: instance.into(),
            metrics,
            seen: HashMap::new(),
            labels: HashSet::new(),
            queue: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            failures: 0,
        }
    }

    /// Takes the reports of a computation over `ingresses` (by
    /// `namespace/name`); makes the new ones visible.
    pub fn report(&mut self, reports: &[Report], ingresses: &BTreeMap<String, Ingress>) {
        self.seen
            .retain(|key, (v, _)| ingresses.get(key).is_some_and(|i| version(i) == *v));
        for r in reports {
            let Some(ingress) = ingresses.get(&r.ingress) else {
                continue;
            };
            let (_, done) = self
                .seen
                .entry(r.ingress.clone())
                .or_insert_with(|| (version(ingress), HashSet::new()));
            if !done.insert((r.reason, r.message.clone())) {
                continue;
            }
            let message = cut(&r.message, NOTE_MAX);
            if r.warning {
                warn!(ingress = %r.ingress, reason = r.reason, annotation = r.annotation.as_deref().unwrap_or(""), "{message}");
            } else {
                info!(ingress = %r.ingress, reason = r.reason, annotation = r.annotation.as_deref().unwrap_or(""), "{message}");
            }
            if let Some(annotation) = &r.annotation {
                let result = result_of(r.reason);
                let annotation = if self.labels.contains(annotation) || self.labels.len() < LABELS {
                    self.labels.insert(annotation.clone());
                    annotation.clone()
                } else {
                    "other".to_owned()
                };
                self.metrics
                    .ingress_annotations
                    .get_or_create(&AnnotationLabels { annotation, result })
                    .inc();
            }
            if self.queue.len() >= QUEUE {
                self.count("dropped");
                debug!(ingress = %r.ingress, "Event queue full; Event dropped");
                continue;
            }
            self.queue.push_back(self.event(ingress, r, message));
        }
        self.dispatch();
    }

    fn event(&self, ingress: &Ingress, r: &Report, note: String) -> Event {
        let ns = ingress.namespace().unwrap_or_default();
        let name = ingress.name_any();
        let now = k8s_openapi::jiff::Timestamp::now();
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}{:x}",
                    cut(&name, 200),
                    now.as_nanosecond(),
                    seq
                )),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            action: Some(ACTION.into()),
            reason: Some(r.reason.into()),
            note: Some(note),
            event_time: Some(MicroTime(now)),
            regarding: Some(ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("Ingress".into()),
                name: Some(name),
                namespace: Some(ns),
                uid: ingress.metadata.uid.clone(),
                resource_version: ingress.metadata.resource_version.clone(),
                field_path: None,
            }),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if r.warning { "Warning" } else { "Normal" }.into()),
            ..Event::default()
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .ingress_events
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    fn dispatch(&mut self) {
        while self.in_flight.len() < IN_FLIGHT {
            let Some(event) = self.queue.pop_front() else {
                break;
            };
            self.in_flight.push(self.sink.create(event));
        }
    }

    /// Waits for an Event creation to finish and starts the next.
    /// Cancel-safe; pends forever when idle.
    pub async fn step(&mut self) {
        let Some(result) = self.in_flight.next().await else {
            return std::future::pending().await;
        };
        match result {
            Ok(()) => self.count("created"),
            Err(e) => {
                self.count("failed");
                self.failures += 1;
                // The first failure, then one in a hundred: a missing RBAC
                // rule should be seen, not flood the log.
                if self.failures % 100 == 1 {
                    warn!(error = %e, failures = self.failures, "cannot create Events on Ingresses");
                } else {
                    debug!(error = %e, "cannot create an Event");
                }
            }
        }
        self.dispatch();
    }

    /// Events waiting or being created.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.in_flight.len()
    }
}

/// The metric's `result` of a report about an annotation (a path that an
/// annotation made a regular expression, when it does not compile, is an
/// invalid value too).
fn result_of(reason: &str) -> &'static str {
    use super::annotations::ProblemKind;
    [
        ProblemKind::Unsupported,
        ProblemKind::Invalid,
        ProblemKind::NotApplied,
    ]
    .into_iter()
    .find(|k| k.reason() == reason)
    .map_or("invalid", ProblemKind::label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<Event>>>, Arc<Mutex<bool>>);

    impl EventSink for Recorded {
        fn create(&self, event: Event) -> BoxFuture<'static, Result<(), kube::Error>> {
            let fail = *self.1.lock().unwrap();
            self.0.lock().unwrap().push(event);
            Box::pin(async move {
                if fail {
                    Err(kube::Error::Api(
                        kube::core::Status::failure("forbidden", "Forbidden")
                            .with_code(403)
                            .boxed(),
                    ))
                } else {
                    Ok(())
                }
            })
        }
    }

    fn ingress(name: &str, generation: i64) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("web".into()),
                generation: Some(generation),
                uid: Some("u-1".into()),
                ..ObjectMeta::default()
            },
            ..Ingress::default()
        }
    }

    fn report(key: &str, annotation: Option<&str>, message: &str) -> Report {
        Report {
            ingress: key.into(),
            warning: true,
            reason: if annotation.is_some() {
                "UnsupportedAnnotation"
            } else {
                "Conflict"
            },
            annotation: annotation.map(Into::into),
            message: message.into(),
        }
    }

    async fn settle<S: EventSink>(r: &mut Reporter<S>) {
        while r.pending() > 0 {
            r.step().await;
        }
    }

    #[tokio::test]
    async fn once_per_generation_with_an_event_a_metric_and_bounded_notes() {
        let sink = Recorded::default();
        let metrics = DiscoveryMetrics::default();
        let mut r = Reporter::new(sink.clone(), "lb-0", metrics.clone());
        let mut objects: BTreeMap<String, Ingress> = [("web/a".to_owned(), ingress("a", 1))]
            .into_iter()
            .collect();
        let long = "x".repeat(5000);
        let reports = [
            report(
                "web/a",
                Some("nginx.ingress.kubernetes.io/limit-rps"),
                "limit-rps is not supported",
            ),
            report("web/a", None, &long),
            report("web/gone", None, "not an object we know"),
        ];
        r.report(&reports, &objects);
        settle(&mut r).await;
        r.report(&reports, &objects);
        settle(&mut r).await;
        let events = sink.0.lock().unwrap().clone();
        assert_eq!(events.len(), 2, "once, and only for existing objects");
        let e = &events[0];
        assert_eq!(e.reason.as_deref(), Some("UnsupportedAnnotation"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_controller.as_deref(), Some(CONTROLLER));
        assert_eq!(e.reporting_instance.as_deref(), Some("lb-0"));
        let regarding = e.regarding.as_ref().unwrap();
        assert_eq!(
            (
                regarding.kind.as_deref(),
                regarding.name.as_deref(),
                regarding.namespace.as_deref(),
                regarding.uid.as_deref()
            ),
            (Some("Ingress"), Some("a"), Some("web"), Some("u-1"))
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("web"));
        assert_ne!(events[0].metadata.name, events[1].metadata.name);
        assert!(events[1].note.as_ref().unwrap().len() <= NOTE_MAX);
        let count = |annotation: &str, result| {
            metrics
                .ingress_annotations
                .get_or_create(&AnnotationLabels {
                    annotation: annotation.into(),
                    result,
                })
                .get()
        };
        assert_eq!(
            count("nginx.ingress.kubernetes.io/limit-rps", "unsupported"),
            1
        );
        // A new generation reports again, and so do new annotations.
        objects.insert("web/a".into(), ingress("a", 2));
        r.report(&reports, &objects);
        settle(&mut r).await;
        assert_eq!(sink.0.lock().unwrap().len(), 4);
        assert_eq!(
            count("nginx.ingress.kubernetes.io/limit-rps", "unsupported"),
            2
        );
        let created = metrics
            .ingress_events
            .get_or_create(&ResultLabels { result: "created" })
            .get();
        assert_eq!(created, 4);
        let mut annotated = ingress("a", 2);
        annotated.metadata.annotations = Some([("x".to_owned(), "y".to_owned())].into());
        objects.insert("web/a".into(), annotated);
        r.report(&reports, &objects);
        settle(&mut r).await;
        assert_eq!(sink.0.lock().unwrap().len(), 6);
        // Failures are counted, not retried.
        *sink.1.lock().unwrap() = true;
        objects.insert("web/a".into(), ingress("a", 3));
        r.report(&reports[..1], &objects);
        settle(&mut r).await;
        assert_eq!(
            metrics
                .ingress_events
                .get_or_create(&ResultLabels { result: "failed" })
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn the_queue_and_the_metric_labels_are_bounded() {
        let sink = Recorded::default();
        let metrics = DiscoveryMetrics::default();
        let mut r = Reporter::new(sink.clone(), "lb-0", metrics.clone());
        let objects: BTreeMap<String, Ingress> = [("web/a".to_owned(), ingress("a", 1))]
            .into_iter()
            .collect();
        let reports: Vec<Report> = (0..QUEUE + 100)
            .map(|i| {
                let name = format!("nginx.ingress.kubernetes.io/x{i}");
                report("web/a", Some(&name), &name)
            })
            .collect();
        r.report(&reports, &objects);
        assert_eq!(r.pending(), QUEUE);
        let dropped = metrics
            .ingress_events
            .get_or_create(&ResultLabels { result: "dropped" })
            .get();
        assert_eq!(dropped, 100);
        let other = metrics
            .ingress_annotations
            .get_or_create(&AnnotationLabels {
                annotation: "other".into(),
                result: "unsupported",
            })
            .get();
        assert_eq!(other, (QUEUE + 100 - LABELS) as u64);
        assert_eq!(r.labels.len(), LABELS);
        settle(&mut r).await;
        assert_eq!(sink.0.lock().unwrap().len(), QUEUE);
        assert_eq!(cut("héllo", 4), "h...");
    }
}
